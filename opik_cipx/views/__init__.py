"""The daemon's read-only HTTP faces on loopback: admin stats/health and the viewer.

See docs/ARCHITECTURE.md, "Layout".
"""
