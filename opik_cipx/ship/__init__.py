"""Ship: spooled records to Opik's REST API, in order, each acknowledged once.

See docs/ARCHITECTURE.md, "Layout".
"""
