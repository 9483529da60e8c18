"""`[budget]` parsed and checked, and the local periods its caps count in (`opik_cipx/caps.py`)."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.caps import Budget, Caps, parse_budget, period, read_budget
from opik_cipx.config import load_settings
from tests.conftest import examples
from tests.time_zone import in_zone, local_ns

HOUR_NS = 3600 * 10**9


def test_no_table_is_no_cap():
    assert not Budget().enabled
    assert not parse_budget({}).enabled


def test_caps_warn_at_and_projects_are_read():
    budget = parse_budget({"day_usd": 20, "session_usd": 2.5, "warn_at": 0.5,
                           "projects": {"/srv/a": {"week_usd": 10}, "~/code/x/": {"session_usd": 1}}})
    assert budget.enabled and budget.warn_at == 0.5
    assert budget.caps == Caps(session_usd=2.5, day_usd=20.0)
    home = os.path.expanduser("~")
    assert dict(budget.projects) == {"/srv/a": Caps(week_usd=10.0), f"{home}/code/x": Caps(session_usd=1.0)}


def test_a_project_is_its_directory_and_below_and_the_deepest_wins():
    budget = parse_budget({"projects": {"/srv": {"day_usd": 1}, "/srv/app": {"day_usd": 2}}})
    assert budget.project_of("/srv/app/sub") == "/srv/app"
    assert budget.project_of("/srv/app") == "/srv/app"
    assert budget.project_of("/srv/other") == "/srv"
    assert budget.project_of("/srvx") is None and budget.project_of(None) is None


def test_a_project_session_cap_replaces_the_global_one():
    budget = parse_budget({"session_usd": 5, "projects": {"/srv/cheap": {"session_usd": 1}, "/srv/b": {"day_usd": 3}}})
    assert budget.session_cap("/srv/cheap") == 1.0
    assert budget.session_cap("/srv/b") == 5.0
    assert budget.session_cap(None) == 5.0


@pytest.mark.parametrize("raw, named", [
    ({"day_usd": 0}, "budget.day_usd"),
    ({"day_usd": -1}, "budget.day_usd"),
    ({"day_usd": "20"}, "budget.day_usd"),
    ({"day_usd": True}, "budget.day_usd"),
    ({"day_usd": float("inf")}, "budget.day_usd"),
    ({"daily_usd": 5}, "budget.daily_usd: unknown key"),
    ({"warn_at": 0}, "budget.warn_at"),
    ({"warn_at": 1.5}, "budget.warn_at"),
    ({"projects": {"relative/dir": {"day_usd": 1}}}, 'budget.projects."relative/dir"'),
    ({"projects": {"/srv": {"dayusd": 1}}}, 'budget.projects."/srv".dayusd: unknown key'),
    ({"projects": {"/srv": 3}}, 'budget.projects."/srv"'),
    ([1, 2], "budget:"),
])
def test_a_bad_value_is_one_line_naming_the_key(raw, named):
    with pytest.raises(ValueError) as caught:
        parse_budget(raw)
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_settings_stop_on_a_bad_budget_naming_the_file(tmp_path):
    (tmp_path / "config.toml").write_text("[budget]\nday_usd = -3\n")
    from opik_cipx.config import ConfigError

    with pytest.raises(ConfigError, match="config.toml, key 'budget': budget.day_usd"):
        load_settings({"CIPX_HOME": str(tmp_path)})
    (tmp_path / "config.toml").write_text('[budget]\nday_usd = 3\n[budget.projects."/srv"]\nmonth_usd = 40\n')
    budget = load_settings({"CIPX_HOME": str(tmp_path)}).budget
    assert budget.caps.day_usd == 3.0 and dict(budget.projects) == {"/srv": Caps(month_usd=40.0)}


def test_read_budget_for_light_readers(tmp_path):
    path = tmp_path / "config.toml"
    assert read_budget(str(path)) is None  # no file
    path.write_text("capture_content = false\n")
    assert read_budget(str(path)) is None
    path.write_text("[budget]\nweek_usd = 50\n")
    assert read_budget(str(path)) == Budget(Caps(week_usd=50.0))
    path.write_text("[budget]\nweek_usd = -50\n")
    assert read_budget(str(path)) is None  # the daemon and `opik-cipx budget` say why


@pytest.fixture
def paris():
    with in_zone("Europe/Paris"):
        yield


@pytest.fixture
def new_york():
    with in_zone("America/New_York"):
        yield


def test_day_week_and_month_labels_and_bounds(paris):
    ns = local_ns(2026, 12, 31, 23, 30)  # a Thursday
    day, week, month = (period(scope, ns) for scope in ("day", "week", "month"))
    assert (day.label, week.label, month.label) == ("2026-12-31", "2026-W53", "2026-12")
    assert day.start_ns == local_ns(2026, 12, 31) and day.end_ns == local_ns(2027, 1, 1)
    assert week.start_ns == local_ns(2026, 12, 28) and week.end_ns == local_ns(2027, 1, 4)  # Monday to Monday
    assert month.start_ns == local_ns(2026, 12, 1) and month.end_ns == local_ns(2027, 1, 1)


def test_a_local_day_is_23_or_25_hours_when_the_clocks_change(new_york):
    spring, autumn = period("day", local_ns(2026, 3, 8, 12)), period("day", local_ns(2026, 11, 1, 12))
    assert spring.end_ns - spring.start_ns == 23 * HOUR_NS
    assert autumn.end_ns - autumn.start_ns == 25 * HOUR_NS
    assert period("day", autumn.end_ns - 1).label == "2026-11-01"
    assert period("day", autumn.end_ns).label == "2026-11-02"


@settings(max_examples=examples(300), deadline=None)
@given(ns=st.integers(min_value=946_684_800 * 10**9, max_value=4_102_444_800 * 10**9),
       scope=st.sampled_from(("day", "week", "month")),
       zone=st.sampled_from(("UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe")))
def test_periods_contain_their_moment_and_follow_each_other(ns, scope, zone):
    with in_zone(zone):  # zones with summer time reach the 23- and 25-hour days (Lord Howe: half an hour)
        current = period(scope, ns)
        assert current.start_ns <= ns < current.end_ns
        after = period(scope, current.end_ns)
        assert after.start_ns == current.end_ns and after.label > current.label
        assert period(scope, current.start_ns) == current == period(scope, current.end_ns - 1)
