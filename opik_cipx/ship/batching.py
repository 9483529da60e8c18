"""The requests a spool batch becomes: traces first, then spans; each id once per request.

Pure: `plan_requests` takes the batch's records and the limits and gives the `Request`s, each a
route (`ship/opik_api.py`) and its records. Of the versions of one id in the batch only the newest
(`last_updated_at`, the later on a tie) is sent. On the batch endpoints records are packed up to
the record and byte limits; with a device token each trace version is a request of its own, to
the route `trace_route` picks (a create for a trace Opik does not hold yet, else an update).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opik_cipx.ship.opik_api import SPANS_BATCH, TRACE_UPDATE, TRACES_BATCH, Route
from opik_cipx.store.spool_lines import KINDS

Item = tuple[dict[str, Any], int]  # body, its size on disk
Record = tuple[str, dict[str, Any], int]  # kind, body, size on disk
Key = tuple[str, str, str]  # kind, id, last_updated_at: one version of one record


def record_key(kind: str, body: dict[str, Any]) -> Key:
    return kind, body["id"], str(body.get("last_updated_at", ""))


@dataclass
class Request:
    """One planned request: a route and the records it carries."""

    route: Route
    items: list[Item]

    @property
    def alone(self) -> bool:
        return len(self.items) == 1

    @property
    def key(self) -> Key:
        """The first record's version (the record, for a lone one)."""
        return record_key(self.route.kind, self.items[0][0])

    def halves(self) -> list["Request"]:
        half = len(self.items) // 2
        return [Request(self.route, self.items[:half]), Request(self.route, self.items[half:])]

    def updating(self) -> "Request":
        """The same trace version as an update (Opik already holds the trace)."""
        return Request(TRACE_UPDATE, self.items)


def newest_versions(records: list[Record], kind: str) -> list[Item]:
    """The newest version of each id of `kind`, in the order the ids first came."""
    latest: dict[str, Item] = {}
    for record_kind, body, size in records:
        if record_kind != kind:
            continue
        seen = latest.get(body["id"])
        if seen is None or str(body.get("last_updated_at", "")) >= str(seen[0].get("last_updated_at", "")):
            latest[body["id"]] = (body, size)
    return list(latest.values())


def plan_requests(records: list[Record], max_records: int, max_bytes: int,
                  trace_route: Callable[[dict[str, Any]], Route] | None = None) -> list[Request]:
    """The batch's requests: traces first, then spans. `trace_route`: traces one per request, to
    the route it gives (a device token); None: traces on the batch endpoint too."""
    out: list[Request] = []
    for kind in KINDS:
        items = newest_versions(records, kind)
        if kind == "trace" and trace_route is not None:
            out += [Request(trace_route(item[0]), [item]) for item in items]
            continue
        route = TRACES_BATCH if kind == "trace" else SPANS_BATCH
        chunk: list[Item] = []
        nbytes = 0
        for item in items:
            if chunk and (len(chunk) >= max_records or nbytes + item[1] > max_bytes):
                out.append(Request(route, chunk))
                chunk, nbytes = [], 0
            chunk.append(item)
            nbytes += item[1]
        if chunk:
            out.append(Request(route, chunk))
    return out
