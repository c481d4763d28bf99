"""Sessions and routing: connects a client front to its upstream(s)."""
