"""The work process's materializer on demand: built at the first capture, or at a restore of a
checkpoint holding a session; until then it answers as a fresh materializer does."""

from pathlib import Path

import pytest

from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.on_demand import MaterializerOnDemand
from opik_cipx.materialize.pricing import load_price_table
from tests.claude_code_corpus import exchanges
from tests.materialize.test_materializer import config


class Builds:
    """A `build` that counts its calls and returns a real materializer."""

    def __init__(self, tmp_path: Path):
        self.tmp_path, self.count = tmp_path, 0

    def __call__(self) -> Materializer:
        self.count += 1
        return Materializer(config(self.tmp_path), load_price_table())


def test_until_a_capture_it_answers_as_a_fresh_materializer_without_building_one(tmp_path):
    build = Builds(tmp_path)
    lazy, fresh = MaterializerOnDemand(build), build()
    lazy.restore(fresh.snapshot())  # a checkpoint written by a daemon that saw no session
    assert lazy.snapshot() == fresh.snapshot()
    assert lazy.late_records() == fresh.late_records() == []
    assert lazy.unknown_models_section() == fresh.unknown_models.section()
    assert lazy.rate_limits_section() == fresh.rate_limits.section()
    assert build.count == 1  # only `fresh`


def test_the_first_capture_builds_it_once_and_the_records_are_the_materializers(tmp_path):
    build = Builds(tmp_path)
    lazy, eager = MaterializerOnDemand(build), build()
    for _, capture in exchanges("simple"):
        assert lazy.materialize(capture).records == eager.materialize(capture).records
    assert build.count == 2
    assert lazy.snapshot() == eager.snapshot() != MaterializerOnDemand(build).snapshot()
    assert lazy.unknown_models_section() == eager.unknown_models.section()
    assert lazy.rate_limits_section() == eager.rate_limits.section()


def test_a_checkpoint_holding_a_session_builds_it_at_the_restore(tmp_path):
    build = Builds(tmp_path)
    eager = build()
    for _, capture in exchanges("simple"):
        eager.materialize(capture)
    lazy = MaterializerOnDemand(build)
    lazy.restore(eager.snapshot())
    assert build.count == 2 and lazy.snapshot() == eager.snapshot()


def test_a_checkpoint_that_is_no_snapshot_is_refused_as_the_materializer_refuses_it(tmp_path):
    lazy = MaterializerOnDemand(Builds(tmp_path))
    with pytest.raises(ValueError, match="not a materializer snapshot"):
        lazy.restore({"sessions": [{"id": "s"}]})
    assert lazy.snapshot() == Builds(tmp_path)().snapshot()  # state unchanged
