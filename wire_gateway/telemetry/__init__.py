"""Logs (and, later, OpenTelemetry): how the gateway tells operators what happened."""
