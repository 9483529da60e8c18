"""The wire: Claude Code's HTTP exchange, forwarded byte for byte and teed off as a Capture.

Everything here runs on the request path or right beside it (the tee queue), so nothing here
parses bodies, touches the disk or waits on off-wire work. See docs/ARCHITECTURE.md, "Layout".
"""
