"""A call's exact token counts, read once from the response's `usage` (docs/ARCHITECTURE.md, "Call record").

Every reader of a call's tokens (pricing's classes, the span's Opik usage, the trace roll-up,
the ledger) takes them from a `Usage`, never from the mapping again. The mapping is kept as the
response reported it (`original`): it is what `metadata.cc.usage` and Opik's `original_usage.*`
show. A token field that is present but not a count (a whole number from 0 to 2**63 - 1, what a
ledger column holds) is named in `malformed`; its class reads it as `pricing.token_counts`
does (a positive number is truncated to a whole one, anything else is 0).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opik_cipx.materialize.pricing import token_counts

TOKEN_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
CACHE_SPLIT = "cache_creation"
SPLIT_FIELDS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
MAX_COUNT = 2**63 - 1


@dataclass(frozen=True)
class Usage:
    """Tokens per price class (cache writes by TTL: writes the response does not split are
    5-minute writes), and `prompt_tokens`: uncached input + cache reads + cache writes as the
    response's top-level fields say (Opik's `prompt_tokens`; the sum of the four input classes
    unless the response's TTL split disagrees with its total)."""

    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int  # thinking included
    prompt_tokens: int
    original: Mapping[str, Any]  # read-only
    malformed: tuple[str, ...] = ()  # e.g. ("output_tokens", "cache_creation.ephemeral_1h_input_tokens")

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def input_side(self) -> int:
        """Every input-side token of the price classes: what the request's buckets share."""
        return self.input + self.cache_write + self.cache_read


def read_usage(usage: Mapping[str, Any] | None) -> Usage | None:
    """The usage of one response; None when it reported none (absent or empty)."""
    if not usage:
        return None
    counts = token_counts(usage)
    return Usage(
        input=counts["input"],
        cache_write_5m=counts["cache_write_5m"],
        cache_write_1h=counts["cache_write_1h"],
        cache_read=counts["cache_read"],
        output=counts["output"],
        prompt_tokens=prompt_tokens(usage),
        original=usage,
        malformed=_malformed(usage),
    )


def prompt_tokens(usage: Mapping[str, Any]) -> int:
    """Input-side tokens as the top-level fields say: uncached input + cache reads + cache writes."""
    return (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _malformed(usage: Mapping[str, Any]) -> tuple[str, ...]:
    out = [name for name in TOKEN_FIELDS if not _count_or_absent(usage.get(name))]
    split = usage.get(CACHE_SPLIT)
    if isinstance(split, dict):  # JSON: a dict (an ABC check costs ten times more)
        out += [f"{CACHE_SPLIT}.{name}" for name in SPLIT_FIELDS if not _count_or_absent(split.get(name))]
    elif split is not None:
        out.append(CACHE_SPLIT)
    return tuple(out)


def _count_or_absent(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT)
