"""A call's raw request as the dashboard shows it: folded by bucket, with a jump list.

The request is cut into parts (`parts_of`): runs of consecutive regions of one bucket, the short
JSON punctuation between them (`envelope` regions up to `GLUE_CHARS`) riding along with the part
in progress. Each part is a `<details>` (no script): folded when longer than `FOLD_CHARS` (all
open with `?unfold=1`), its summary naming the bucket, its labels and its size; inside, every
region in its bucket's colour. The jump list above gives each bucket's size and a link to each
of its parts.
"""

import html
from dataclasses import dataclass, field
from typing import Any

from opik_cipx.ledger.figures import label_of
from opik_cipx.ledger.queries import LABELLED
from opik_cipx.materialize.attribution import BUCKETS
from opik_cipx.views import charts
from opik_cipx.views.charts import PALETTE, tint
from opik_cipx.views.markup import esc
from opik_cipx.wire.capture import Capture

ENVELOPE = "envelope"
GLUE_CHARS = 200  # envelope this short joins the part in progress instead of making one
FOLD_CHARS = 600  # a longer part starts folded
MAX_JUMPS = 40  # links per bucket in the jump list
MAX_LABELS = 3  # labels a part's summary names


@dataclass
class Part:
    """Regions [start, end) of the request shown as one fold; `bucket` is what they carry
    (short envelope aside)."""

    bucket: str
    start: int
    end: int
    regions: list[Any] = field(default_factory=list)  # attribution Regions, in order

    def labels(self) -> list[str]:
        """Its bucket's labels, in order, as the dashboard words them (`figures.label_of`)."""
        key = next((k for k, bucket in LABELLED.items() if bucket == self.bucket), "")
        seen = dict.fromkeys(label_of(r.label, key) for r in self.regions if r.bucket == self.bucket and r.label)
        return list(seen)


def parts_of(regions: list[Any]) -> list[Part]:
    """The folds of a request: every region in exactly one part, in order, parts contiguous."""
    parts: list[Part] = []
    glue: list[Any] = []  # short envelope waiting for the next region
    for region in regions:
        if region.bucket == ENVELOPE and region.end - region.start <= GLUE_CHARS:
            glue.append(region)
            continue
        if parts and parts[-1].bucket == region.bucket:
            parts[-1].regions += [*glue, region]
            parts[-1].end = region.end
        else:
            if parts and glue:  # punctuation after a part closes it
                parts[-1].regions += glue
                parts[-1].end = glue[-1].end
                glue = []
            start = (glue[0] if glue else region).start
            parts.append(Part(region.bucket, start, region.end, [*glue, region]))
        glue = []
    if glue:
        if parts:
            parts[-1].regions += glue
            parts[-1].end = glue[-1].end
        else:
            parts.append(Part(ENVELOPE, glue[0].start, glue[-1].end, glue))
    return parts


def jump_list(parts: list[Part]) -> str:
    """Per bucket, in the order of BUCKETS: its size and a link to each of its parts."""
    by_bucket: dict[str, list[int]] = {}
    for n, part in enumerate(parts, 1):
        by_bucket.setdefault(part.bucket, []).append(n)
    rows = []
    for bucket in sorted(by_bucket, key=lambda b: BUCKETS.index(b) if b in BUCKETS else len(BUCKETS)):
        numbers = by_bucket[bucket]
        chars = sum(parts[n - 1].end - parts[n - 1].start for n in numbers)
        links = "".join(f"<a href='#part-{n}'>{n}</a>" for n in numbers[:MAX_JUMPS])
        more = f" and {len(numbers) - MAX_JUMPS} more" if len(numbers) > MAX_JUMPS else ""
        rows.append(f"<tr><td><i class=sw style='background:{PALETTE.get(bucket, '#999')}'></i>{esc(bucket)}</td>"
                    f"<td class=num>{chars:,} chars</td><td>{links}{more}</td></tr>")
    return ("<table class=jump id=jump><tr><th>bucket</th><th class=num>size</th><th>parts</th></tr>"
            f"{''.join(rows)}</table>")


def folded_request(capture: Capture, attribution: Any, unfold: bool, here: str) -> str:
    """The request body in folds by bucket, after its jump list; `here` is the page's own link
    (HTML-escaped), for the fold/unfold switch."""
    text = capture.request_body.decode("utf-8", "replace")
    parts = parts_of(attribution.regions)
    switch = (f"<a href='{here}'>fold the long parts</a>" if unfold else
              f"<a href='{here}{'&amp;' if '?' in here else '?'}unfold=1'>unfold every part</a>")
    out = [f"<section id=request><h2>The request, by bucket ({attribution.total_chars:,} chars in {len(parts):,} parts)"
           f"</h2><p class=muted>Parts longer than {FOLD_CHARS:,} characters are folded: click one to open it, or "
           f"{switch}. Each region is painted in its bucket's colour (its label on hover).</p>",
           jump_list(parts),
           charts.legend([b for b in BUCKETS if attribution.buckets[b]], {b: tint(PALETTE[b]) for b in BUCKETS})]
    for n, part in enumerate(parts, 1):
        size = part.end - part.start
        labels = part.labels()
        named = ", ".join(labels[:MAX_LABELS]) + (
            f" and {len(labels) - MAX_LABELS} more" if len(labels) > MAX_LABELS else "")
        opened = " open" if unfold or size <= FOLD_CHARS else ""
        out.append(f"<details class=part id=part-{n} style='--c:{PALETTE.get(part.bucket, '#999')}'{opened}><summary>"
                   f"{n}. {esc(part.bucket)}{': ' + esc(named) if named else ''} &middot; {size:,} chars"
                   "</summary><pre>")
        for region in part.regions:
            title = region.bucket + (f": {region.label}" if region.label else "")
            out.append(f"<span style='background:{tint(PALETTE[region.bucket])}' title='{esc(title)}'>"
                       f"{html.escape(text[region.start:region.end])}</span>")
        out.append("</pre></details>")
    out.append("</section>")
    return "".join(out)
