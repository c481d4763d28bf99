"""Sans-IO JSON-RPC/MCP protocol code: frames, newline framing, errors, era rules.

Nothing in this package does IO or imports trio; it is plain functions and small
state machines over bytes, tested without sockets.
"""
