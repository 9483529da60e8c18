"""opik-cipx: a local cost-intelligence proxy for Claude Code."""

__version__ = "0.1.0"
