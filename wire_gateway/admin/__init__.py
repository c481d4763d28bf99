"""The control plane: a small read-only HTTP API beside the data plane (`serve_admin`)."""
