"""Bytes on real pipes and sockets. Knows trio and the wire layer, nothing above."""
