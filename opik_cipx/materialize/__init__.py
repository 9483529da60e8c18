"""Materialize: a Capture becomes Opik records — exact usage and cost, buckets, trace structure.

Pure functions over bytes and dicts (response reading, pricing, attribution, call kinds, record
shapes), driven by the one stateful `Materializer`. See docs/ARCHITECTURE.md, "Layout".
"""
