"""The aggregate endpoint: all configured servers shown to one client as one server (docs/aggregate.md).

One class, `Aggregate`, is what sessions see; behind it the work is cut where its jobs meet, so
each can be read (and changed) without the others:

- `endpoint`: `Aggregate`, the Upstream surface sessions call and the dispatch of each request;
- `members`: `Member`, one server inside the aggregate, and its era handshake;
- `directory`: which member a tool or prompt name, a resource URI or a list cursor belongs to;
- `greeting`: what it answers itself: `initialize`, `server/discover`, the modern era's refusals;
- `relay`: progress, cancellations, the members' requests to the client, list changes;
- `subscriptions`: a modern client's resource subscriptions, as `resources/subscribe` on legacy members;
- `asks`: a legacy member's requests to a modern client, as input-required results;
- `asks_legacy`: a modern member's input-required results, as requests to a legacy client;
- `sessions`: the legacy sessions of its own a call that could be asked runs on (HTTP);
- `direct`: the task-free fast path for `tools/call`;
- `states`: the member and aggregate states and their transitions; `messages`: shared helpers.
"""
from wire_gateway.proxy.aggregate.endpoint import AGGREGATE_NAME, Aggregate

__all__ = ["AGGREGATE_NAME", "Aggregate"]
