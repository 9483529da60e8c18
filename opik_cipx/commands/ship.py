"""`opik-cipx ship --retry-quarantine`: send the records Opik refused once more, after the cause is fixed.

Records Opik refused for good (a validation error, a conflict, a record that kept making it
fail) wait in `spool/quarantine.jsonl` with Opik's reason; `opik-cipx status` counts them. This
hands them back (docs/ARCHITECTURE.md, "On-disk formats"): the quarantine files become requeue
files, and the daemon's shipper puts their records into the spool behind what waits there and
ships them like any other; one Opik refuses again returns to the quarantine with the new reason.
With the daemon up it takes them within seconds; with it down, when it starts.
"""

import argparse
import os
import sys

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import ConfigError, Settings
from opik_cipx.control.daemon_control import admin_port, fetch_stats, paths_only_settings, read_state
from opik_cipx.store.quarantine import QUARANTINE, quarantine_counts, request_requeue

TAKE_WAIT_S = 10.0  # how long to wait for a running daemon to take the records in
POLL_S = 0.1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retry-quarantine", action="store_true", required=True,
                        help=f"put the records set aside in spool/{QUARANTINE} back in the queue to Opik")
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc}", file=sys.stderr)
    return run(args, paths_only_settings(dict(os.environ)))


def run(args: argparse.Namespace, settings: Settings, clock: Clock = SYSTEM) -> int:
    spool = settings.spool_dir
    counts = quarantine_counts(spool)
    moved = request_requeue(spool, clock.time_ns()) if counts["quarantined"] else 0
    if not moved:
        pending = f" ({counts['retry_pending']} record(s) from an earlier retry still wait for the daemon)" \
            if counts["retry_pending"] else ""
        print(f"opik-cipx: the quarantine is empty: nothing to retry{pending}")
        return 0
    stats = fetch_stats(admin_port(settings, read_state(settings)))
    if stats is None:
        print(f"opik-cipx: {moved} record(s) handed back from the quarantine; the daemon ships them when it starts "
              "(`opik-cipx sync` starts it)")
        return 0
    opik = found if isinstance(found := stats.get("opik"), dict) else {}
    if not opik.get("configured"):
        print(f"opik-cipx: {moved} record(s) handed back from the quarantine; they are shipped once Opik is "
              "configured (`opik-cipx status` says how)")
        return 0
    deadline = clock.monotonic() + TAKE_WAIT_S
    while quarantine_counts(spool)["retry_pending"] and clock.monotonic() < deadline:
        clock.sleep(POLL_S)
    if quarantine_counts(spool)["retry_pending"]:
        print(f"opik-cipx: {moved} record(s) handed back from the quarantine; the daemon puts them in the queue "
              "once its shipper is free (`opik-cipx status` shows them as retry pending)")
    else:
        print(f"opik-cipx: {moved} record(s) are back in the queue to Opik; `opik-cipx status` shows them ship, "
              "and one Opik refuses again returns to the quarantine with its new reason")
    return 0
