"""injection detectors (being written; see docs/guardrails.md)."""
from __future__ import annotations

from wire_gateway.guardrails.detectors.base import Detector

DETECTORS: tuple[Detector, ...] = ()
