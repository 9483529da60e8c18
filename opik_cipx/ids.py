"""UUIDv7 ids: random ones for fresh records, derived ones for replayable records.

Opik requires UUIDv7 ids. Records built from a capture derive their ids from the capture
(same capture => same ids), so a replay or a re-ship upserts instead of duplicating.
"""

import hashlib
import os

from opik_cipx.clock import SYSTEM


def _uuid7(unix_ms: int, tail: bytes) -> str:
    """Lay out a version-7 UUID: 48-bit ms timestamp, then 74 bits taken from `tail`."""
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= int.from_bytes(tail[:10], "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    digits = f"{value:032x}"  # as str(uuid.UUID(int=value)) writes it, without loading uuid (and platform)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def new_uuid7(unix_ms: int | None = None) -> str:
    """A fresh random UUIDv7 for `unix_ms` (now when omitted)."""
    if unix_ms is None:
        unix_ms = SYSTEM.time_ns() // 1_000_000
    return _uuid7(unix_ms, os.urandom(10))


def derived_uuid7(unix_ms: int, *parts: str) -> str:
    """A UUIDv7 for `unix_ms` whose random bits are a hash of `parts`: stable across runs."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return _uuid7(unix_ms, digest)


def uuid7_unix_ms(value: str) -> int:
    """The millisecond timestamp embedded in a UUIDv7 string."""
    import uuid  # reading ids is the dashboard's; making them, each process's start

    return uuid.UUID(value).int >> 80


def is_uuid7(value: str) -> bool:
    """True when `value` is a canonical version-7, RFC 4122 variant UUID string."""
    import uuid  # as in `uuid7_unix_ms`

    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
