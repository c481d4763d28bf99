"""Load and benchmark tools for wire-gateway (``python -m load --help``; docs/load.md): they drive the
gateway from outside, over the pipes and sockets a real MCP host uses, and must never be the
bottleneck of what they measure."""


class BenchError(Exception):
    """A run could not complete (a target died, timed out, broke the protocol): said, never hidden."""
