"""Where caches, pins and quarantines live: one small async interface, two backends.

`memory` (the default) needs no service; `redis` shares everything between gateway
instances and carries invalidations over pub/sub. See docs/policy.md.
"""
