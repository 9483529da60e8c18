"""The request in prompt order: what cache boundaries and blocks are placed on (docs/OPIK.md, "Blocks").

Anthropic reads a request as one prompt, cached as a prefix: the tool definitions, then the system
prompt, then the messages. `Prompt.runs` lists every character of the body in that order, as runs
`(chars, envelope, owner)`: one region that is not envelope (`owner`) with the envelope around it
(`envelope` of the `chars`). The body is cut into units: the `tools` value, the `system` value, the
`[` of `messages`, each message (with the separator before it), the rest of `messages` (its `]`).
Within a unit, envelope joins the piece after it (the syntax that opens a piece goes with it), and
the unit's closing envelope the piece before it; a unit of envelope only is a run of its own,
except at a section's start or end, where it joins the run after or before it (the `[`, the `]`).
Everything outside the three values (the request's parameters and its own braces) comes last,
each region a run of its own.

Pure; `prompt(parts, layout)` for a whole body, and `owned(regions)` for one unit: the request
reader keeps each message's runs, so a request costs runs only for what is new. A run's region
keeps the offsets it was made with (only its size, bucket, label and part count). A prompt's
`memo` is kept across a conversation's requests by the request reader: what is derived from the
runs (materialize/cipx.py's blocks) is kept there for the next request, which shares most runs.
"""

import bisect
from collections.abc import Iterable
from itertools import chain
from typing import Any, NamedTuple

from opik_cipx.materialize.attribution.model import ENVELOPE, SECTIONS, Layout, Region

Run = tuple[int, int, Region]  # (chars, envelope chars among them, the region they belong to)


class Prompt(NamedTuple):
    """Every character of a request in prompt order, and where its cache breakpoints end (prompt
    positions, sorted; a top-level `cache_control` puts one at the end of the messages). `memo`:
    the conversation's, shared with its earlier and later requests (never changes a result: what
    is kept there is checked against the runs before it is used)."""

    runs: list[Run]
    breakpoints: list[int]
    memo: dict[Any, Any]


def owned(regions: Iterable[Region]) -> list[Run]:
    """The runs of one unit's regions (in body order)."""
    out: list[Run] = []
    waiting, last = 0, None
    for region in regions:
        size = region.end - region.start
        if region.bucket == ENVELOPE:
            waiting += size
            last = last or region
            continue
        out.append((size + waiting, waiting, region))
        waiting = 0
    if waiting:
        if out:
            chars, envelope, region = out[-1]
            out[-1] = (chars + waiting, envelope + waiting, region)
        else:
            out.append((waiting, waiting, last))  # type: ignore[arg-type]  # waiting > 0: last is set
    return out


def prompt(parts: Iterable[tuple[list[Region], int]], layout: Layout,
           messages: list[list[Run]] | None = None, memo: dict[Any, Any] | None = None) -> Prompt:
    """The prompt of a body given as `parts`: (regions, the shift that makes their offsets body
    offsets), in body order, together sorted and contiguous, a unit lying within one part; `layout`
    in body offsets. `messages`: the runs of each message, already made (the request reader's);
    `parts` then leave them out (the first part ends with the `[` of `messages`). `memo`: the
    conversation's (a new one when not given), where each part's runs are kept (`_stretch`)."""
    sections = layout.sections
    edges = {name: _unit_edges(name, start, end, layout, messages is None) for name, (start, end) in sections.items()}
    cuts = sorted((start, end, name) for name, units in edges.items() for start, end in units)
    memo = {} if memo is None else memo
    stretches = [_stretch(regions, shift, cuts, memo, index) for index, (regions, shift) in enumerate(parts)]
    runs: list[Run] = []
    for name in SECTIONS:
        section: list[Run] = []
        for index, (by_section, _) in enumerate(stretches):
            section += by_section.get(name, ())
            if name == "messages" and index == 0 and messages is not None:
                section += chain.from_iterable(messages)
        runs += _folded(section)
    for _, rest in stretches:
        runs += rest
    return Prompt(runs, _breakpoints(layout), memo)


Stretch = tuple[dict[str, list[Run]], list[Run]]  # a part's runs: of its units, by section, in order; and the rest


def _stretch(regions: list[Region], shift: int, cuts: list[tuple[int, int, str]], memo: dict[Any, Any],
             index: int) -> Stretch:
    """The runs of the `index`th part, `regions` shifted by `shift`, cut at the units `cuts` (body
    offsets, sorted): kept in `memo` with the regions and the cuts relative to the part, and used
    again for a part of the same regions and relative cuts (a request's head and tail repeat)."""
    if not regions:
        return {}, []
    low, high = regions[0].start + shift, regions[-1].end + shift
    mine = [(start - shift, end - shift, name) for start, end, name in cuts if start < high and end > low]
    kept = memo.get((_stretch, index))
    if kept is not None and kept[1] == mine and kept[0] == regions:
        return kept[2]
    units: dict[tuple[int, int], list[Region]] = {(start, end): [] for start, end, _ in mine}
    rest: list[Run] = []
    at = 0
    for region in regions:
        start, region_end = region.start, region.end
        while start < region_end:
            while at < len(mine) and mine[at][1] <= start:
                at += 1
            inside = at < len(mine) and mine[at][0] <= start
            stop = min(region_end, mine[at][1] if inside else mine[at][0] if at < len(mine) else region_end)
            piece = region if (start, stop) == (region.start, region_end) else \
                Region(start, stop, region.bucket, region.label, region.part)
            if inside:
                units[mine[at][:2]].append(piece)
            else:
                rest.append((stop - start, stop - start if region.bucket == ENVELOPE else 0, region))
            start = stop
    by_section: dict[str, list[Run]] = {}
    for start, end, name in mine:
        by_section.setdefault(name, []).extend(owned(units[start, end]))
    memo[(_stretch, index)] = (regions, mine, (by_section, rest))
    return by_section, rest


def _folded(section: list[Run]) -> list[Run]:
    """A section's runs with an envelope-only run at its start (the `[` of `messages`) joined to the
    run after it, and one at its end (the `]`) to the run before it."""
    if len(section) > 1 and section[0][0] == section[0][1]:
        chars, envelope, owner = section[1]
        section[1:2] = [(chars + section[0][0], envelope + section[0][1], owner)]
        del section[0]
    if len(section) > 1 and section[-1][0] == section[-1][1]:
        chars, envelope, owner = section[-2]
        section[-2:] = [(chars + section[-1][0], envelope + section[-1][1], owner)]
    return section


def _unit_edges(name: str, start: int, end: int, layout: Layout, cut_messages: bool) -> list[tuple[int, int]]:
    """The units of a section's value [start, end): one for `tools` or `system`; for `messages`, its
    `[`, each message (when `cut_messages`), and the rest."""
    if name != "messages" or end - start < 2:
        return [(start, end)]
    opened, message_ends = start + 1, layout.message_ends  # (in body order: sorted)
    ends = message_ends[bisect.bisect_right(message_ends, opened):bisect.bisect_left(message_ends, end)]
    last = ends[-1] if ends else opened
    if not cut_messages:
        ends = []
    out = [(start, opened)]
    previous = opened
    for at in ends:
        out.append((previous, at))
        previous = at
    if last < end:
        out.append((last, end))
    return out


def _breakpoints(layout: Layout) -> list[int]:
    starts, position = {}, 0
    for name in SECTIONS:
        if name in layout.sections:
            starts[name] = position
            position += layout.sections[name][1] - layout.sections[name][0]
    out = []
    for at in layout.breakpoints:
        for name, (start, end) in layout.sections.items():
            if start < at <= end:
                out.append(starts[name] + at - start)
    if layout.auto_cache and "messages" in starts:
        start, end = layout.sections["messages"]
        out.append(starts["messages"] + end - start - 1)  # before the array's `]`
    return sorted(out)
