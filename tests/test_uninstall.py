"""`uninstall` puts back what it replaced: a status line that `statusline --install --force` replaced
comes back byte for byte."""

from tests.lifecycle_helpers import machine_with_upstream  # noqa: F401 - fixture
from tests.test_install_hooks import install_sh, write_settings


def test_a_status_line_replaced_with_force_comes_back_byte_for_byte(machine_with_upstream):  # noqa: F811
    m = machine_with_upstream
    theirs = {"type": "command", "command": "bash ~/.claude/statusline.sh", "padding": 0}
    original = write_settings(m, {"model": "opus", "statusLine": theirs, "env": {"FOO": "1"}})
    assert install_sh(m).returncode == 0  # our hooks and ANTHROPIC_BASE_URL go in too
    assert m.cli("statusline", "--install").returncode == 1  # theirs is not replaced without --force
    forced = m.cli("statusline", "--install", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"yours is kept in {m.home / 'statusline-backup.json'}; `opik-cipx uninstall` puts it back" in forced.stdout
    assert m.settings()["statusLine"]["command"] == f"{m.home / 'bin' / 'opik-cipx'} statusline"
    assert m.cli("statusline", "--install", "--force").returncode == 0  # ours again: the backup stays theirs

    gone = m.cli("uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert f"put back your statusLine in {m.settings_path}" in gone.stdout
    assert m.settings_path.read_bytes() == original
