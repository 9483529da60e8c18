"""Control: what short-lived commands use to run the daemon and wire it into Claude Code.

`state.json` / `ports.json`, the supervisor units, Claude Code's settings, the executable, and
the bring-up / restart / teardown steps `sync`, `restart` and `uninstall` share.
See docs/ARCHITECTURE.md, "Layout".
"""
