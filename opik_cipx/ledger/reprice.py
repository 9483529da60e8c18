"""Pricing a call again with changed token counts, as `materialize/pricing.price_call` prices it
(docs/ADVICE.md, "Arithmetic").

A counterfactual moves or removes tokens of a call (a definition group's share of each cache
tier, cache writes made 1-hour ones, a break's tokens read instead of written) or keeps them on
another model; its saving is the call's cost minus the changed call's, both priced here with the
price table in use, at the call's own start (so a dated price change applies as it did).
`price_call` charges `tokens x rate / 1e6` per token class at the rates of the call's model, date,
tier (by the prompt's size) and multipliers (fast mode, inference region); `Repricer.rates` asks
`price_call` for those rates once per such regime and applies them, so counts that are shares of a
tier (fractions of a token, as blocks allot them) are priced exactly rather than cut to whole
tokens. A usage that lists billed `iterations` is priced by `price_call` itself, its changed counts
rounded to whole tokens. Web search fees never change in a counterfactual and are left out.
"""

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from opik_cipx.materialize.pricing import PriceTable, Resolution, iteration_tokens, price_call, write_split

MTOK = 1_000_000
RATE_KEYS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


class Tokens(NamedTuple):
    """A call's tokens by price class (fractions allowed)."""

    fresh: float = 0.0
    write_5m: float = 0.0
    write_1h: float = 0.0
    read: float = 0.0
    output: float = 0.0

    @property
    def prompt(self) -> float:
        return self.fresh + self.write_5m + self.write_1h + self.read

    def plus(self, other: "Tokens", sign: float = 1.0) -> "Tokens":
        return Tokens(*(a + sign * b for a, b in zip(self, other, strict=True)))


class Priced(NamedTuple):
    """What pricing a call needs besides its tokens."""

    model: str | None
    started_at_ns: int
    speed: str | None = None
    inference_geo: str | None = None
    iterations: str | None = None  # the usage's `iterations`, as JSON


def summed(items: Iterable[Tokens]) -> Tokens:
    """The sum of token counts, class by class."""
    out = Tokens()
    for tokens in items:
        out = out.plus(tokens)
    return out


def without(part: Tokens, tokens: Tokens) -> Tokens:
    """`tokens` less `part`, class by class (a definition removed from a call)."""
    return tokens.plus(part, -1)


def usd(tokens: Tokens, rates: dict[str, float]) -> float:
    """The tokens at `rates` (USD per million tokens of each class)."""
    return sum(n * rates[key] for n, key in zip(tokens, RATE_KEYS, strict=True)) / MTOK


class Repricer:
    """Prices calls with one price table; remembers each model's row and each regime's rates."""

    def __init__(self, table: PriceTable):
        self.table = table
        self._found: dict[str, Resolution] = {}
        self._rates: dict[tuple, dict[str, float]] = {}

    def resolve(self, model: str) -> Resolution:
        found = self._found.get(model)
        if found is None:
            found = self._found[model] = self.table.resolve(model)
        return found

    def rates(self, model: str | None, at_ns: int, prompt: float, speed: str | None = None,
              geo: str | None = None) -> dict[str, float] | None:
        """The rates `price_call` applies to a call of `model` started at `at_ns` with a prompt of
        `prompt` tokens; None when the model cannot be priced."""
        if not model:
            return None
        found = self.resolve(model)
        if found.price is None:
            return None
        period = found.price.at(at_ns)
        whole = round(prompt)
        tier = period.tier_for(whole)
        key = (found.priced_as, id(period), tier.name if tier else None, speed, geo)
        rates = self._rates.get(key)
        if rates is None:
            usage: dict[str, Any] = {"input_tokens": whole}
            if speed:
                usage["speed"] = speed
            if geo:
                usage["inference_geo"] = geo
            applied = price_call(model, usage, self.table, at_ns).rates or {}
            rates = self._rates[key] = {k: applied[k] for k in RATE_KEYS}
        return rates

    def steady(self, model: str | None, first_ns: int, last_ns: int, prompt_max: float, speed: str | None = None,
               geo: str | None = None) -> dict[str, float] | None:
        """The one set of rates of every call of `model` started from `first_ns` to `last_ns` with a
        prompt of at most `prompt_max` tokens, or None when there is none (no price, a dated change
        in between that changes these rates, a tier at or below `prompt_max`): then each call is
        priced on its own."""
        if not model:
            return None
        found = self.resolve(model)
        if found.price is None:
            return None
        moments = [first_ns, *(p.from_ns for p in found.price.periods
                               if p.from_ns is not None and first_ns < p.from_ns <= last_ns)]
        if any(t.above_prompt_tokens < prompt_max for at in moments for t in found.price.at(at).tiers):
            return None
        rates = self.rates(model, first_ns, 0, speed, geo)
        return rates if all(self.rates(model, at, 0, speed, geo) == rates for at in moments[1:]) else None

    def cost(self, priced: Priced, tokens: Tokens) -> float | None:
        """What a call with these tokens costs (web search aside); None when it cannot be priced."""
        rates = self.rates(priced.model, priced.started_at_ns, tokens.prompt, priced.speed, priced.inference_geo)
        return None if rates is None else usd(tokens, rates)

    def saving(self, priced: Priced, actual: Tokens, change: Callable[[Tokens], Tokens],
               model: str | None = None) -> float | None:
        """The call's cost minus its cost with its tokens changed by `change` (and on `model`, when
        given); None when either cannot be priced. A usage with iterations: `iterations_saving`."""
        if priced.iterations:
            return iterations_saving(self, priced, actual, change, model)
        before = self.cost(priced, actual)
        after = self.cost(priced._replace(model=model or priced.model), change(actual))
        return None if before is None or after is None else before - after


def usage_of(tokens: Tokens, priced: Priced) -> dict[str, Any]:
    """A usage mapping with these tokens (rounded to whole ones) and the call's pricing settings."""
    usage: dict[str, Any] = {
        "input_tokens": round(tokens.fresh), "cache_read_input_tokens": round(tokens.read),
        "cache_creation_input_tokens": round(tokens.write_5m) + round(tokens.write_1h),
        "cache_creation": {"ephemeral_5m_input_tokens": round(tokens.write_5m),
                           "ephemeral_1h_input_tokens": round(tokens.write_1h)},
        "output_tokens": round(tokens.output)}
    if priced.speed:
        usage["speed"] = priced.speed
    if priced.inference_geo:
        usage["inference_geo"] = priced.inference_geo
    return usage


def _iteration_tokens(iteration: dict, top_split: tuple[int, int] | None) -> Tokens:
    counts, _ = iteration_tokens(iteration, top_split)
    return Tokens(counts["input"], counts["cache_write_5m"], counts["cache_write_1h"], counts["cache_read"],
                  counts["output"])


def iterations_saving(repricer: Repricer, priced: Priced, actual: Tokens, change: Callable[[Tokens], Tokens],
                      model: str | None) -> float | None:
    """`Repricer.saving` for a usage whose billed iterations `price_call` prices one by one: the
    change applies to the top level and to each `message` iteration (the ones that describe this
    request's prompt; a `compaction` iteration is kept as billed), counts rounded to whole tokens."""
    iterations = json.loads(priced.iterations or "[]")
    top_split = write_split(usage_of(actual, priced))  # an iteration without a split is priced with it
    changed = []
    for iteration in iterations:
        if isinstance(iteration, dict) and iteration.get("type", "message") == "message":
            iteration = {**usage_of(change(_iteration_tokens(iteration, top_split)), priced), "type": "message",
                         **({"model": iteration["model"]} if model is None and "model" in iteration else {})}
        changed.append(iteration)
    before = price_call(priced.model, {**usage_of(actual, priced), "iterations": iterations}, repricer.table,
                        priced.started_at_ns)
    after = price_call(model or priced.model, {**usage_of(change(actual), priced), "iterations": changed},
                       repricer.table, priced.started_at_ns)
    if before.total_usd is None or after.total_usd is None:
        return None
    return (before.total_usd - (before.web_search_usd or 0)) - (after.total_usd - (after.web_search_usd or 0))
