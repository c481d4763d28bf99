"""Load and benchmark tools for wire-gateway.

Run ``python -m load --help`` for the list of subcommands.  The tools are
plain blocking Python on purpose: they drive the gateway from the outside,
over the same pipes a real MCP host would use, and must never be the
bottleneck of what they measure.
"""
