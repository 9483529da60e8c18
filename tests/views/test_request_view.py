"""A call's request folded by bucket: every region in exactly one part, in order; short JSON
punctuation never makes a part of its own; the page's folds give back the request whole."""

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.materialize.attribution import categorize
from opik_cipx.materialize.attribution.model import Region
from opik_cipx.views.request_view import FOLD_CHARS, GLUE_CHARS, folded_request, parts_of
from tests.claude_code_corpus import exchange

BUCKETS = ["system_prompt", "tools_builtin", "tool_io", "envelope", "user_prompt"]


@st.composite
def regions(draw):
    """Contiguous regions from 0, of any buckets and sizes (envelope short or long)."""
    out, at = [], 0
    for bucket, size in draw(st.lists(st.tuples(st.sampled_from(BUCKETS), st.integers(1, 3 * GLUE_CHARS)),
                                      max_size=40)):
        out.append(Region(at, at + size, bucket, None))
        at += size
    return out


@given(regions())
def test_parts_partition_the_regions_in_order(rs):
    parts = parts_of(rs)
    assert [r for p in parts for r in p.regions] == rs
    assert all(p.start == p.regions[0].start and p.end == p.regions[-1].end for p in parts)
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    for p in parts:
        long = [r.bucket for r in p.regions if r.bucket != "envelope" or r.end - r.start > GLUE_CHARS]
        assert set(long) <= {p.bucket}  # one bucket a part; short envelope rides along
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.bucket != b.bucket  # a run of one bucket is one part


def test_the_largest_recorded_request_folds_into_parts_that_give_it_back_whole():
    capture = exchange("nonstream_and_others", "033")  # 86,994 characters
    attribution = categorize(capture.request_body)
    page = folded_request(capture, attribution, unfold=False, here="/capture/x?model=m")
    folds = re.findall(r"<details class=part id=part-(\d+)[^>]*?( open)?><summary>", page)
    assert len(folds) == len(parts_of(attribution.regions)) == 14
    assert {f"#part-{n}" for n, _ in folds} == set(re.findall(r"href='(#part-\d+)'", page))  # the jump list
    sizes = [int(s.replace(",", "")) for s in re.findall(r"&middot; ([\d,]+) chars</summary>", page)]
    assert [bool(opened) for _, opened in folds] == [size <= FOLD_CHARS for size in sizes]
    assert max(sizes) > 70_000 and "tools_builtin: Agent, Bash, CronCreate and 22 more" in page
    assert "skills: (the list of available skills)" in page  # the skill list is not a skill called menu
    text = "".join(html.unescape(re.sub(r"<[^>]+>", "", pre)) for pre in re.findall(r"<pre>(.*?)</pre>", page, re.S))
    assert text == capture.request_body.decode()
    assert "href='/capture/x?model=m&amp;unfold=1'" in page
    unfolded = folded_request(capture, attribution, unfold=True, here="/capture/x")
    assert unfolded.count(" open><summary>") == 14 and "href='/capture/x'>fold the long parts" in unfolded
