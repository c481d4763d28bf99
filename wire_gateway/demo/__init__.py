"""The bundled demo MCP server (stdlib only, no gateway code): what the built-in
default config serves, so `wire-gateway stdio` works with nothing else installed.
`rawmcp` is also the toolkit the test fixtures in fixtures/servers/ are built on.
"""
