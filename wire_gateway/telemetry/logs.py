"""Logging set-up: to stderr or a file, never stdout (stdout may be the MCP stream).

Two formats (`logging.format`): `text`, the default, one line for a person; `json`, one JSON object
per line for a log pipeline: `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `message`,
then what is known of the request being handled (`telemetry.context`): `server`, `session`,
`request_id` (the same as the span's attribute and the dump records' session and id), and
`trace_id`/`span_id` when the request is traced; `exception` with the traceback. Both go through
the one masker: the text line whole, the JSON object field by field before it is serialised (a
secret JSON-escaped inside a serialised line would no longer match its registered value).

The libraries' loggers (the OpenTelemetry exporter's retries, redis, hypercorn) write through the same
handler, from WARNING up: left to Python's last-resort handler they would print bare lines to stderr,
outside `--log-file`, unmasked, and break a pipeline that reads the JSON format line by line.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

from wire_gateway.telemetry import context, masking
from wire_gateway.telemetry.masking import Masker

_LIBRARIES: logging.Handler | None = None      # the handler the root logger got from setup_logging
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class MaskingFormatter(logging.Formatter):
    def __init__(self, masker: Masker) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        return self.masker(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        mask = self.masker
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        tag = context.REQUEST.get()
        if tag is not None:
            doc["server"] = mask(tag.server)
            if tag.session is not None:
                doc["session"] = mask(tag.session)
            doc["request_id"] = mask(tag.request_id)
            if tag.trace_id:
                doc["trace_id"] = format(tag.trace_id, "032x")
                doc["span_id"] = format(tag.span_id, "016x")
        else:
            scope = context.SCOPE.get()
            if scope is not None:
                if scope.server is not None:
                    doc["server"] = mask(scope.server)
                if scope.session is not None:
                    doc["session"] = mask(scope.session)
        if record.exc_info:
            doc["exception"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = mask(record.exc_text)
        if record.stack_info:
            doc["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "info", file: str | None = None, mask_patterns: Iterable[str] = (),
                  fmt: str = "text") -> None:
    """Log through the process-wide masker, which `mask_patterns` configure for every other output
    the gateway writes (its error answers, /status) as well. `fmt`: "text" or "json"."""
    masking.configure(mask_patterns)
    handler: logging.Handler
    handler = logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    if fmt == "json":
        context.ACTIVE = True      # the fronts and runners fill in the request's server, session and id
        context.JSON_LOGS = True
        handler.setFormatter(JsonFormatter(masking.mask))
    else:
        handler.setFormatter(MaskingFormatter(masking.mask))
    ours = logging.getLogger("wire_gateway")
    ours.handlers[:] = [handler]
    ours.setLevel(LEVELS.get(level, logging.INFO))
    ours.propagate = False
    global _LIBRARIES
    libraries = logging.getLogger()
    if _LIBRARIES is not None:
        libraries.removeHandler(_LIBRARIES)      # set up again (tests do): one handler, the new one
    libraries.addHandler(handler)
    libraries.setLevel(max(logging.WARNING, LEVELS.get(level, logging.INFO)))
    _LIBRARIES = handler
