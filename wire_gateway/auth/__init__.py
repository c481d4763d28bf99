"""Who may call what: tenancy (projects, users, API keys), how a request proves who it is, and
what that lets it reach.

`keys` and `model` are pure; `backends` keep the records (SQLite beside the config, or Redis
when the store is shared); `tenancy` is the operations the CLI runs; `directory` is the
in-memory snapshot a running gateway authenticates against. See docs/auth.md.
"""
