"""A call's raw request as the dashboard shows it: every region in its bucket's colour."""

import html
from typing import Any

from opik_cipx.materialize.attribution import BUCKETS
from opik_cipx.views import charts
from opik_cipx.views.charts import PALETTE, tint
from opik_cipx.views.markup import esc
from opik_cipx.wire.capture import Capture

def painted_request(capture: Capture, attribution: Any) -> str:
    """The raw request body, every region in its bucket's colour; unattributed ones are red."""
    text = capture.request_body.decode("utf-8", "replace")
    out = [f"<section><h2>The request, painted by bucket ({attribution.total_chars:,} chars)</h2>",
           charts.legend([b for b in BUCKETS if attribution.buckets[b]], {b: tint(PALETTE[b]) for b in BUCKETS}),
           "<pre>"]
    for region in attribution.regions:
        title = region.bucket + (f": {region.label}" if region.label else "")
        out.append(f"<span style='background:{tint(PALETTE[region.bucket])}' title='{esc(title)}'>"
                   f"{html.escape(text[region.start:region.end])}</span>")
    out.append("</pre></section>")
    return "".join(out)
