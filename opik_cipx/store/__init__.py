"""The durable stores: raw captures (`captures/`) and the write-ahead spool of Opik records (`spool/`).

Owner-only files under `$CIPX_HOME`, bounded in size and age. See docs/ARCHITECTURE.md,
"On-disk formats".
"""
