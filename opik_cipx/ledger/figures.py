"""The figures of a call or a group of calls as every reader shows them: one definition each for
the dashboard, `report`, `status` and the status line.

`figures` is a mapping with the ledger's token columns (`input_tokens`,
`cache_creation_input_tokens`, `cache_read_input_tokens`): one call's (a `calls` row) or a
group's sums (a report row or total, `queries.FIGURES`). This module imports nothing, so the
status line's repaint can use it (bench/bench_statusline.py).
"""

UNKNOWN = "(unknown)"  # a group key or a call attribute the ledger does not know


def input_side(figures: dict[str, float]) -> float:
    """Every input-side token: uncached input, cache writes and cache reads."""
    return figures["input_tokens"] + figures["cache_creation_input_tokens"] + figures["cache_read_input_tokens"]


def cache_hit(figures: dict[str, float]) -> float | None:
    """Cache reads over every input-side token; None without input."""
    whole = input_side(figures)
    return figures["cache_read_input_tokens"] / whole if whole else None


def label_of(value: object) -> str:
    """A group key or attribute as shown: `UNKNOWN` for None (NULL in the ledger)."""
    return UNKNOWN if value is None else str(value)


def unpriced_note(calls: int) -> str:
    """One sentence on the calls of a model the price table lacks (their cost is left out);
    '' when there are none."""
    if not calls:
        return ""
    return (f"{calls:,} call(s) used a model missing from the price table: their cost is not included "
            "(add it under [prices.\"<model>\"] in config.toml)")
