"""Logging set-up: to stderr or a file, never stdout (stdout may be the MCP stream)."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from wire_gateway.telemetry import masking
from wire_gateway.telemetry.masking import Masker

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class MaskingFormatter(logging.Formatter):
    def __init__(self, masker: Masker) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        return self.masker(super().format(record))


def setup_logging(level: str = "info", file: str | None = None, mask_patterns: Iterable[str] = ()) -> None:
    """Log through the process-wide masker, which `mask_patterns` configure for every other output
    the gateway writes (its error answers, /status) as well."""
    masking.configure(mask_patterns)
    handler: logging.Handler
    handler = logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(masking.mask))
    root = logging.getLogger("wire_gateway")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False
