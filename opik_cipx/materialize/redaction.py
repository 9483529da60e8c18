"""Redacted mode (`CIPX_CAPTURE_CONTENT=false`): ship counts, costs and structure, never text.

Dropped here: span and trace input/output (raw request/response, tool args and results) and
the error message and traceback of a failed tool (they are the tool's output; the traceback,
which Opik requires non-blank, becomes a placeholder). The text inside the attribution
facts (prompt text, command args, tool samples) is dropped by `attribution.redacted` before
the records are built. Every record gets `cc.privacy = {capture_content: false, applied_at}`.
"""

from opik_cipx.materialize.spans import iso_z

REDACTED_TEXT = "[redacted: capture_content=false]"


def redact_records(records: list[dict], applied_ns: int) -> list[dict]:
    """The records without span/trace input/output, marked as redacted (in place)."""
    privacy = {"capture_content": False, "applied_at": iso_z(applied_ns)}
    for record in records:
        body = record["body"]
        body.pop("input", None)
        body.pop("output", None)
        if body.get("type") == "tool" and "error_info" in body:
            body["error_info"].update(message="", traceback=REDACTED_TEXT)
        body.setdefault("metadata", {}).setdefault("cc", {})["privacy"] = privacy
    return records
