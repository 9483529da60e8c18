"""Model ids the price table does not know, seen since the daemon started (`unknown_models` in the admin stats).

The materializer notes every priced call here; the first call of a new id logs one line that
says how it was priced and which `[prices."<model>"]` table in config.toml would price it
exactly. Bounded: beyond `MAX_IDS` distinct ids, further ones are only counted.
"""

import logging
import threading
from typing import TYPE_CHECKING, Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.stats import utc_iso

if TYPE_CHECKING:
    from opik_cipx.materialize.pricing import Cost

log = logging.getLogger(__name__)
MAX_IDS = 64
MAX_ID_CHARS = 120  # model ids come off the wire: never log or keep an unbounded one


class UnknownModels:
    """Thread-safe tally of unknown model ids: calls, how they were priced, when first seen."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock  # dates the first call of each id
        self._lock = threading.Lock()
        self._ids: dict[str, dict[str, Any]] = {}
        self._calls = 0

    def note(self, cost: "Cost") -> None:
        """Count `cost` if its model is not in the table; log the first call of each new id."""
        if not cost.unknown_model or not cost.model:
            return
        model = cost.model[:MAX_ID_CHARS]
        with self._lock:
            self._calls += 1
            entry = self._ids.get(model)
            if entry is not None:
                entry["calls"] += 1
                return
            if len(self._ids) >= MAX_IDS:
                return
            self._ids[model] = {"id": model, "calls": 1, "priced_as": cost.estimated_from,
                                "reason": cost.unpriced_reason if cost.estimated_from is None else None,
                                "first_seen_at": utc_iso(self.clock.time())}
        if cost.estimated_from:
            log.warning("pricing: model %r is not in the price table; its calls are priced as %s (flagged "
                        "estimated_from). For the exact price add [prices.\"%s\"] to config.toml "
                        "(`opik-cipx prices` shows the table)", model, cost.estimated_from, model)
        else:
            log.warning("pricing: model %r has no price, its calls have no cost: %s", model, cost.unpriced_reason)

    def section(self) -> dict[str, Any]:
        """The `unknown_models` section of the admin stats."""
        with self._lock:
            return {"calls": self._calls, "ids": [dict(entry) for entry in self._ids.values()]}
