"""store/runs.py: bounded joins that give back exactly the bytes they were given."""

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.store.runs import runs


@given(st.lists(st.binary(max_size=40)), st.integers(min_value=1, max_value=64))
def test_runs_are_the_parts_in_order_and_none_outgrows_its_last_part(parts, run_bytes):
    out = list(runs(parts, run_bytes))
    assert b"".join(out) == b"".join(parts)
    assert all(len(run) < run_bytes + 40 for run in out)  # a run closes once it reaches run_bytes
