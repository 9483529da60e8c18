"""Attribution: which cost bucket every character of a request body belongs to.

`categorize(body)` partitions the body's JSON text (decoded UTF-8) into `Region`s, one bucket
each (`BUCKETS`), and extracts `facts` for span metadata. It is a pure function.

Which characters a value owns (the rule that makes the partition exact):
- A content string (system text, message text, thinking, signature) owns its quotes and
  escapes. When its text splits across buckets, each piece owns the escapes of the characters
  it holds, the opening quote goes with the first piece and the closing quote with the last.
- A payload owns everything from its first to its last character, nested keys and
  punctuation included: a tool definition (less its own `cache_control` member), a tool_use
  `input`, a tool_result `content`, an image `source`.
- Everything else is envelope: whitespace, braces, brackets, commas and colons; every key of
  the request, system-block, message and content-block objects; the values of `type`, `role`,
  `id`, `name`, `tool_use_id`, `is_error`, `cache_control`; and the request parameters
  (`model`, `max_tokens`, `thinking`, `metadata`, `context_management`, `output_config`, ...).
- A value nothing recognises — an unknown top-level member, block type or block member, text
  before the first known heading of a `role:"system"` message — is unattributed.
"""

from opik_cipx.materialize.attribution.facts import redacted
from opik_cipx.materialize.attribution.model import BUCKETS, Attribution, Region
from opik_cipx.materialize.attribution.request import categorize

__all__ = ["BUCKETS", "Attribution", "Region", "categorize", "redacted"]
