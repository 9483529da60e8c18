"""`lifecycle`: `sync.lock` waited for with a deadline on the command's clock."""

import fcntl
import os

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
