"""Where the load tool finds what it ships with: the fixture library, and its own name.

Installed, the package is ``wire_gateway_load`` with the library as package data; from a checkout,
``load`` with the repository's ``fixtures/``. Child processes run the same package, same interpreter.
"""
from __future__ import annotations

import subprocess
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


def source_state() -> str:
    """The commit the gateway runs from, and whether wire_gateway/ differs from it."""
    if CHECKOUT is None:
        from wire_gateway import __version__
        return f"installed wire-gateway {__version__}"
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--", "wire_gateway"],
                               capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "") if head else "unknown"
