"""Many byte strings joined a bounded run at a time: one join of megabytes holds the GIL for
milliseconds, where a run of a few hundred kilobytes does not (the capture log's compression,
the spool's writes)."""

from collections.abc import Iterable, Iterator


def runs(parts: Iterable[bytes], run_bytes: int) -> Iterator[bytes]:
    """`parts` joined into runs of about `run_bytes` bytes (a longer part alone); together, in
    order, exactly the bytes of `parts`."""
    run: list[bytes] = []
    size = 0
    for part in parts:
        run.append(part)
        size += len(part)
        if size >= run_bytes:
            yield b"".join(run)
            run, size = [], 0
    if run:
        yield b"".join(run)
