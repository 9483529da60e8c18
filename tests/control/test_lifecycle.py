"""`lifecycle`: `sync.lock` waited for with a deadline on the command's clock; the home held by `uninstall`
against every `sync`."""

import fcntl
import os
from contextlib import ExitStack

import pytest

from opik_cipx.config import load_settings
from opik_cipx.control import lifecycle
from tests.fake_clock import FakeClock


@pytest.fixture
def settings(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return load_settings({"CIPX_HOME": str(home), "CIPX_CONFIG": os.devnull})


def test_sync_lock_held_by_another_sync_is_given_up_on_at_its_deadline(settings):
    with open(settings.home / "sync.lock", "wb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # another sync/restart holds it
        clock = FakeClock(0)
        with pytest.raises(TimeoutError, match="another opik-cipx sync/restart held .* for 30s"):
            with lifecycle._Lock(settings, clock=clock):
                pass
        assert clock.monotonic() - 1000 > lifecycle.LOCK_TIMEOUT_S  # waited its time, on that clock alone
    with lifecycle._Lock(settings, clock=FakeClock(0)):  # free again: taken at once
        pass


def test_a_sync_does_nothing_while_uninstall_holds_the_home(settings):
    with lifecycle.unless_uninstalling(settings) as first, lifecycle.unless_uninstalling(settings) as second:
        assert first and second  # syncs share the home
    waits = []
    with lifecycle.uninstalling(settings, waiting=lambda: waits.append("waiting"), clock=FakeClock(0)):
        assert waits == []  # no sync under way: taken at once
        with lifecycle.unless_uninstalling(settings) as free:
            assert not free
    with lifecycle.unless_uninstalling(settings) as free:  # let go with the uninstall
        assert free


def test_uninstall_waits_for_the_sync_under_way_on_its_clock_and_gives_up_at_its_deadline(settings):
    waits = []
    clock = FakeClock(0)
    with lifecycle.unless_uninstalling(settings) as free:
        assert free
        with pytest.raises(TimeoutError, match="an opik-cipx sync has been running for more than 60s"):
            with lifecycle.uninstalling(settings, waiting=lambda: waits.append(clock.monotonic()), clock=clock):
                pass
    assert waits == [1000] and clock.monotonic() - 1000 > lifecycle.UNINSTALL_WAIT_S
    with lifecycle.unless_uninstalling(settings) as free:  # the uninstall that gave up holds nothing
        assert free


def test_uninstall_goes_on_once_the_sync_under_way_has_ended(settings):
    sync = ExitStack()
    assert sync.enter_context(lifecycle.unless_uninstalling(settings))

    class SyncEndsAfter2s(FakeClock):
        def sleep(self, seconds):
            super().sleep(seconds)
            if self.monotonic() - 1000 >= 2:
                sync.close()

    clock = SyncEndsAfter2s(0)
    with lifecycle.uninstalling(settings, waiting=lambda: None, clock=clock):
        assert 2 <= clock.monotonic() - 1000 < 2.1
        with lifecycle.unless_uninstalling(settings) as free:
            assert not free


def test_without_a_home_nothing_is_held(tmp_path):
    settings = load_settings({"CIPX_HOME": str(tmp_path / "none"), "CIPX_CONFIG": os.devnull})
    with lifecycle.uninstalling(settings, waiting=lambda: None), lifecycle.unless_uninstalling(settings) as free:
        assert free and not settings.home.exists()
