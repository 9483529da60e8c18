"""`metadata.cipx.session` of a trace: who ran the turn, in which repository, and the session's
subagent totals, as Opik's Cost Intelligence reads them (docs/OPIK.md, "Session"; the contract is
its spec, `opik-cost-intelligence.md`).

A pure function of the call record the trace version is emitted with: its identity (the hook's
record, else this machine's Claude Code account), its session (the hook's record, else where its
requests say it works: the directory and branch), what git said of the turn's repository when the
probe answered in time (`call.repository`), and the session's agent counts. Every version carries
the whole section, so the newest one Opik keeps is complete; a field not known is left out
(Cost Intelligence reads a missing string as "" and a missing number as 0), but `identity` is
always an object: it is the gate that lets the trace's user be counted at all.
"""

from typing import Any

from opik_cipx import __version__
from opik_cipx.materialize.call import CallRecord

SCHEMA_VERSION = 2  # Cost Intelligence skips a lower one
HARNESS = "claude_code"


def section(call: CallRecord) -> dict[str, Any]:
    """`metadata.cipx.session` of the trace version emitted with `call`."""
    who, counts = call.identity, call.agent_counts
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "harness": HARNESS,
        "session_id": call.session.id,
        "cipx_version": __version__,
        "identity": _present({"user_uuid": who.user_uuid, "email": who.user_email,
                              "display_name": who.display_name, "billing_type": who.billing_type}),
    }
    repository = _repository(call)
    if repository:
        out["repository"] = repository
    out.update(agents_dispatched=counts.dispatched, agents_linked=counts.linked, agents_ambiguous=counts.ambiguous)
    return out


def _repository(call: CallRecord) -> dict[str, Any]:
    git, probed = call.session.git, call.repository
    out: dict[str, Any] = {"remote": git.remote if git else None, "branch": git.branch if git else None}
    if probed is not None:
        out = {"remote": out["remote"] or probed.remote, "branch": out["branch"] or probed.branch,
               "head_sha": probed.head_sha, "head_sha_end": probed.head_sha_end, "dirty": probed.dirty,
               "commits_in_trace": probed.commits, "files_added": probed.files_added,
               "files_deleted": probed.files_deleted, "lines_added": probed.lines_added,
               "lines_deleted": probed.lines_deleted}
    return _present(out)


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None and value != ""}
