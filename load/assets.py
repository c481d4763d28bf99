"""Where the load tool finds what it ships with: the fixture library and its own name.

Installed (``pip install``), this package is ``wire_gateway_load`` and carries the fixture
library (``fixtures/sessions``, ``fixtures/servers``) as package data, found through
``importlib.resources``. Run from a checkout (``python -m load``), the package is ``load`` and the
library is the repository's ``fixtures/`` next to it. Child processes the tool starts run the
same package (``python -m PACKAGE``) with the same interpreter, so either way they find it.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PACKAGE = __package__ or "load"


def _fixtures() -> Path:
    inside = Path(str(resources.files(PACKAGE) / "fixtures"))
    return inside if inside.is_dir() else Path(__file__).resolve().parent.parent / "fixtures"


FIXTURES = _fixtures()
SESSIONS = FIXTURES / "sessions"
SERVERS = FIXTURES / "servers"
ECHO_SERVER = SERVERS / "echo.py"          # the stdio echo server (wire_gateway.demo.echo)
HTTP_ECHO = SERVERS / "http_echo.py"       # the raw trio + h11 Streamable HTTP echo server
#: A checkout's root when run from one (its docs/ and git state are reported), else None.
CHECKOUT = Path(__file__).resolve().parent.parent if (Path(__file__).resolve().parent.parent / ".git").exists() \
    else None


def tool(*argv: str) -> list[str]:
    """The argv of a child run of this tool: ``python -m PACKAGE ARGV...``."""
    return [sys.executable, "-m", PACKAGE, *argv]
