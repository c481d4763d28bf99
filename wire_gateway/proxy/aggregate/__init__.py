"""The aggregate endpoint: all configured servers shown to one client as one server (docs/aggregate.md)."""
from wire_gateway.proxy.aggregate.endpoint import AGGREGATE_NAME, Aggregate

__all__ = ["AGGREGATE_NAME", "Aggregate"]
