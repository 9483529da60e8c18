"""The work process's materializer, built when a capture first needs it (docs/ARCHITECTURE.md,
"Imports at start").

Building the materializer loads the call record, the price table, the attribution and the cache
diagnosis: most of what the work process would import at start. A daemon that materializes
nothing (no capture after its checkpoint, no session in it) needs none of that. The follower and
the work process hold a `MaterializerOnDemand`: the materializer's `materialize`, `late_records`,
`snapshot` and `restore`, and the sections of the stats it keeps, each answering as a fresh
materializer would until a capture comes or a checkpoint holding a session is restored.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from opik_cipx.materialize.call import Materialized
    from opik_cipx.materialize.materializer import Materializer
    from opik_cipx.wire.capture import Capture


def empty_state() -> dict[str, Any]:
    """The snapshot of a materializer that has seen no session (`session_state.SessionStates.snapshot`)."""
    return {"turns": [], "sessions": []}


class MaterializerOnDemand:
    """Stands in for the `Materializer` that `build()` returns, and builds it at its first use."""

    def __init__(self, build: "Callable[[], Materializer]"):
        self._build = build
        self._built: Materializer | None = None

    def built(self) -> "Materializer":
        """The materializer, built now if it was not yet (raises what `build` raises)."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def materialize(self, capture: "Capture") -> "Materialized":
        return self.built().materialize(capture)

    def late_records(self) -> list[dict]:
        # git is asked only about the turns of calls materialized: none before it is built
        return self._built.late_records() if self._built is not None else []

    def snapshot(self) -> dict[str, Any]:
        return self._built.snapshot() if self._built is not None else empty_state()

    def restore(self, doc: dict[str, Any]) -> None:
        if self._built is not None or doc != empty_state():
            self.built().restore(doc)

    def unknown_models_section(self) -> dict[str, Any]:
        if self._built is not None:
            return self._built.unknown_models.section()
        from opik_cipx.materialize.unknown_models import UnknownModels  # a fresh one's: no call seen yet

        return UnknownModels().section()

    def rate_limits_section(self) -> dict[str, Any]:
        if self._built is not None:
            return self._built.rate_limits.section()
        from opik_cipx.materialize.rate_limits import RateLimitObserver  # a fresh one's: no call seen yet

        return RateLimitObserver().section()
