"""The load tool ships with the gateway: the wheel's package list covers wire_gateway/, the tool
finds its fixture library through its package, and `wire-gateway load` reaches it."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_explicit_package_list_names_every_package_of_wire_gateway():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "wire_gateway").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_the_fixture_library_is_found_through_the_package():
    from load import assets

    assert (assets.SESSIONS / "echo-small-modern.jsonl").is_file()
    assert assets.ECHO_SERVER.is_file() and assets.HTTP_ECHO.is_file()
    assert assets.tool("run")[1:] == ["-m", "load", "run"]


def test_wire_gateway_load_runs_the_tool_and_the_gateway_does_not_import_it():
    proc = subprocess.run([sys.executable, "-m", "wire_gateway", "load", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: wire-gateway load run"), proc.stderr
    probe = "import sys, wire_gateway.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('load', " \
            "'wire_gateway_load')))"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "[]"
