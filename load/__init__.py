"""Load and benchmark tools for wire-gateway.

Run ``python -m load --help`` for the list of subcommands.  The tools drive
the gateway from the outside, over the same pipes and sockets a real MCP host
would use, and must never be the bottleneck of what they measure: the benches
are plain blocking Python (one epoll loop), ``run`` (the fixture replayer,
``load.replay``) is trio with a fast lane for plain answers; see docs/load.md.
"""


class BenchError(Exception):
    """A run could not complete (a target died, timed out, broke the protocol): said, never hidden."""
