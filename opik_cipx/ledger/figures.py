"""The figures of a call or a group of calls as every reader shows them: one definition each for
the dashboard, `report`, `status` and the status line, in one vocabulary (docs/REPORTS.md,
"Words").

The token classes (`TOKEN_CLASSES`) are named for what they count, with the same words in
tables and pages and the same keys in JSON and CSV: `uncached input` (`uncached_input_tokens`),
`cache write` (`cache_write_tokens`, split into `cache write 5m` and `cache write 1h` where a
single call is shown), `cache read` (`cache_read_tokens`), `input side` (`input_side_tokens`:
those three together) and `output` (`output_tokens`). The ledger's columns keep Anthropic's
usage names (`LEDGER_COLUMNS` maps them): readers rename them as they read.

`figures` is a mapping with the vocabulary's keys: one call's (a row of `queries.CALL_COLUMNS`)
or a group's sums (a report row or total). This module imports nothing, so the status line's
repaint can use it (bench/bench_statusline.py).
"""

UNCACHED, CACHE_WRITE, CACHE_READ, INPUT_SIDE, OUTPUT = (
    "uncached_input_tokens", "cache_write_tokens", "cache_read_tokens", "input_side_tokens", "output_tokens")
CACHE_WRITE_5M, CACHE_WRITE_1H = "cache_write_5m_tokens", "cache_write_1h_tokens"
TOKEN_CLASSES = {  # key -> the words every reader shows, in display order
    UNCACHED: "uncached input",
    CACHE_WRITE: "cache write",
    CACHE_READ: "cache read",
    INPUT_SIDE: "input side",
    OUTPUT: "output",
}
CACHE_WRITES = {CACHE_WRITE_5M: "cache write 5m", CACHE_WRITE_1H: "cache write 1h"}  # one call's split
INPUT_SIDE_MEANS = "uncached input + cache write + cache read"
LEDGER_COLUMNS = {  # vocabulary key -> the ledger's column (Anthropic's usage name)
    UNCACHED: "input_tokens",
    CACHE_WRITE: "cache_creation_input_tokens",
    CACHE_READ: "cache_read_input_tokens",
    OUTPUT: "output_tokens",
}

UNKNOWN = "(unknown)"  # a group key or a call attribute the ledger does not know
SKILL_LIST = "menu"  # the `skills` label attribution gives the list of available skills
SKILL_LIST_WORDS = "(the list of available skills)"


def input_side(figures: dict[str, float]) -> float:
    """Every input-side token: uncached input, cache writes and cache reads."""
    return figures[UNCACHED] + figures[CACHE_WRITE] + figures[CACHE_READ]


def cache_hit(figures: dict[str, float]) -> float | None:
    """Cache reads over every input-side token; None without input."""
    whole = input_side(figures)
    return figures[CACHE_READ] / whole if whole else None


def label_of(value: object, key: str = "") -> str:
    """A group key or attribute as shown: `UNKNOWN` for None (NULL in the ledger); the skills
    label of the skill list (`key` "skill") as what it is, not as a skill."""
    if value is None:
        return UNKNOWN
    if key == "skill" and value == SKILL_LIST:
        return SKILL_LIST_WORDS
    return str(value)


def unpriced_note(calls: int) -> str:
    """One sentence on the calls of a model the price table lacks (their cost is left out);
    '' when there are none."""
    if not calls:
        return ""
    return (f"{calls:,} call(s) used a model missing from the price table: their cost is not included "
            "(add it under [prices.\"<model>\"] in config.toml)")
