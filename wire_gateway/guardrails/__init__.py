"""Guardrails: input and output protection for tool calls (docs/guardrails.md)."""
