"""The policy chain: interceptors that see only tools/list and tools/call (and
notifications/tools/list_changed). Everything else never reaches this package.

Order (fixed, see docs/policy.md): auth -> filter -> pinning -> schema/guardrails -> cache -> upstream.
"""
