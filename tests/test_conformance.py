"""The official MCP conformance suite (npm @modelcontextprotocol/conformance, pinned in
tests/conformance/package.json with the Node 22 it needs) in its server mode, through
`wire-gateway serve`.

The suite connects to a URL as a client, runs the scenarios a spec revision requires
(`--requirements 2025-11-25` or `2026-07-28`: each at its own wire, the initialize
handshake or stateless requests) and writes one checks.json per scenario. Its scenarios
call test tools, resources and prompts by name, which fixtures/servers/conformance_server.py
implements: the legacy-only stdio variant and the modern-only Streamable HTTP variant are
both members of one gateway, so each runs behind its single-server route (/mcp/NAME) and
both behind the aggregate (/mcp).

Every scenario the revision requires is asserted, check by check: a scenario passes
when none of its checks is a FAILURE (WARNING is a SHOULD the suite reports without
failing). Where a route is known to fail, KNOWN lists the failing checks with their
cause; the test fails on any other failure, and on a known one that starts passing
(then the list must shrink). Scenarios the revision runs without scoring them
(extensions such as tasks, scenarios still pending in the suite) are not asserted.

Needs `npm` and the npm registry on the first run (`npm ci` in tests/conformance, as
.ci/run does); the suite runs on the node@22 it installs, whatever `node` is on PATH.
"""
from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_gateway import HttpGateway

ROOT = Path(__file__).resolve().parent.parent
SUITE_DIR = ROOT / "tests" / "conformance"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
SUITE_JS = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
NODE = SUITE_DIR / "node_modules" / "node" / "bin" / "node"
FIXTURE = ROOT / "fixtures" / "servers" / "conformance_server.py"
NPM_CI_TIMEOUT = 300.0
RUN_TIMEOUT = 240.0
FAILED = frozenset({"FAILURE", "ERROR"})

# The aggregate names every tool and prompt `<server>__<name>` (docs/aggregate.md), so a
# scenario that calls `test_simple_text` or gets `test_simple_prompt` by its bare name gets
# "unknown tool" through /mcp; resources keep their URIs and pass.
NAMESPACED = "the aggregate namespaces tool and prompt names (<server>__<name>); the suite calls bare names"
# The 2026-07-28 diagnostics of server-stateless are tools too (test_missing_capability,
# test_streaming_elicitation, test_logging_tool): "not testable" through the aggregate.
NAMESPACED_DIAGNOSTIC = NAMESPACED + " (its diagnostic tools are not found, so the check is not testable)"
KNOWN_AGGREGATE_LEGACY = {
    **{scenario: {scenario: NAMESPACED} for scenario in (
        "completion-complete", "prompts-get-embedded-resource", "prompts-get-simple", "prompts-get-with-args",
        "prompts-get-with-image", "tools-call-audio", "tools-call-elicitation", "tools-call-embedded-resource",
        "tools-call-error", "tools-call-image", "tools-call-mixed-content", "tools-call-sampling",
        "tools-call-simple-text", "tools-call-with-logging", "tools-call-with-progress")},
    "elicitation-sep1034-defaults": {"elicitation-sep1034-general": NAMESPACED},
    "elicitation-sep1330-enums": {"elicitation-sep1330-general": NAMESPACED},
}
KNOWN_AGGREGATE_MODERN = {
    **{scenario: {scenario: NAMESPACED} for scenario in (
        "completion-complete", "prompts-get-embedded-resource", "prompts-get-simple", "prompts-get-with-args",
        "prompts-get-with-image", "tools-call-audio", "tools-call-embedded-resource", "tools-call-error",
        "tools-call-image", "tools-call-mixed-content", "tools-call-simple-text", "tools-call-with-progress")},
    **{f"input-required-result-{scenario}": {f"sep-2322-{check}": NAMESPACED} for scenario, check in (
        ("basic-elicitation", "elicitation-incomplete"), ("basic-list-roots", "list-roots-incomplete"),
        ("basic-sampling", "sampling-incomplete"), ("capability-check", "respect-client-capabilities"),
        ("multi-round", "multi-round-r1"), ("multiple-input-requests", "multiple-inputs-incomplete"),
        ("non-tool-request", "non-tool-incomplete"), ("request-state", "request-state-incomplete"),
        ("result-type", "result-type-included"), ("tampered-state", "reject-tampered-state"))},
    "server-stateless": {
        "sep-2575-http-server-no-independent-requests-on-stream": NAMESPACED_DIAGNOSTIC,
        "sep-2575-missing-capability-http-400": NAMESPACED_DIAGNOSTIC,
        "sep-2575-server-no-log-without-loglevel": NAMESPACED_DIAGNOSTIC,
        "sep-2575-server-rejects-undeclared-capability": NAMESPACED_DIAGNOSTIC,
    },
}

# Through the era bridge (a modern client, the legacy-only stdio fixture). The fixture's legacy
# variant has server-stateless's diagnostic tools the legacy way (it asks for sampling, elicits,
# logs), and the bridge answers for it as the modern server: -32021 for an undeclared capability,
# an input-required result, no log the request did not ask for (docs/bridge.md).
# A legacy server's request has no key of its own: the bridge gives the client the request's
# JSON-RPC id as its key, and the fixture's legacy variant names its requests (`user_name`, ...)
# as the modern variant, and the reference server, name their input requests.
KNOWN_BRIDGE: dict[str, dict[str, str]] = {}

# (route, revision, known failures). Routes: "legacy" and "modern" are the single-server
# routes /mcp/legacy and /mcp/modern, "aggregate" is /mcp, "direct" the modern fixture
# itself, without the gateway (the baseline the routes are compared with).
# "legacy" at 2026-07-28 is a modern client of the legacy-only stdio fixture: the era bridge;
# "modern" at 2025-11-25 a legacy client of the modern-only HTTP fixture: its other half.
CASES = [
    pytest.param("legacy", "2025-11-25", {}, id="legacy-stdio-2025-11-25"),
    pytest.param("legacy", "2026-07-28", KNOWN_BRIDGE, id="bridge-legacy-stdio-2026-07-28"),
    pytest.param("modern", "2026-07-28", {}, id="modern-http-2026-07-28"),
    pytest.param("modern", "2025-11-25", {}, id="bridge-modern-http-2025-11-25"),
    pytest.param("aggregate", "2025-11-25", KNOWN_AGGREGATE_LEGACY, id="aggregate-2025-11-25"),
    pytest.param("aggregate", "2026-07-28", KNOWN_AGGREGATE_MODERN, id="aggregate-2026-07-28"),
    pytest.param("direct", "2026-07-28", {}, id="direct-modern-fixture-2026-07-28"),
]


def pinned_version() -> str:
    return json.loads((SUITE_DIR / "package.json").read_text())["dependencies"][SUITE_PACKAGE]


def installed_version() -> str | None:
    try:
        return json.loads((SUITE_JS.parent.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def suite() -> Path:
    """The suite's entry point, installed with `npm ci` in tests/conformance if it is not (or another version is).
    The install holds a lock: pytest-xdist workers may get here together."""
    with open(SUITE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install_if_needed()
    return SUITE_JS


def install_if_needed() -> None:
    if installed_version() != pinned_version() or not NODE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: cannot install the conformance suite in tests/conformance")
        try:
            done = subprocess.run([npm, "ci", "--prefix", str(SUITE_DIR), "--no-audit", "--no-fund"], cwd=ROOT,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {SUITE_DIR} took more than {NPM_CI_TIMEOUT:.0f}s")
        if done.returncode != 0:
            pytest.fail(f"npm ci in {SUITE_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    assert installed_version() == pinned_version()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """One gateway, two members: the legacy stdio variant and the modern HTTP one (a url server);
    yields it with the URL of each route."""
    tmp = tmp_path_factory.mktemp("conformance")
    port_file = tmp / "modern.port"
    modern = subprocess.Popen([sys.executable, str(FIXTURE), "--era", "modern", "--port-file", str(port_file)],
                              cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    gw = None
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert modern.poll() is None and time.monotonic() < deadline, "the modern fixture did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/mcp"
        gw = HttpGateway(tmp, {"legacy": {"command": sys.executable, "args": [str(FIXTURE), "--era", "legacy"]},
                               "modern": {"url": url}})
        yield gw, {"legacy": gw.url("legacy"), "modern": gw.url("modern"), "aggregate": f"{gw.base}/mcp",
                   "direct": url}
    finally:
        if gw is not None:
            gw.stop()
        modern.terminate()
        modern.wait(10)


def required_scenarios(suite: Path, revision: str) -> list[str]:
    """The server scenarios the revision requires, as the suite lists them (the set is frozen per revision)."""
    done = subprocess.run([str(NODE), str(suite), "list", "--requirements", revision], capture_output=True,
                          text=True, timeout=60, check=True)
    section = done.stdout.split("Server scenarios", 1)[1].split("Client scenarios", 1)[0]
    return re.findall(r"^\s+- (\S+)$", section, re.MULTILINE)


def run_suite(suite: Path, url: str, revision: str, out: Path) -> dict[str, dict[str, str]]:
    """scenario -> {check id: its worst status} for one run of the suite."""
    done = subprocess.run([str(NODE), str(suite), "server", "--url", url, "--requirements", revision,
                           "-o", str(out)], cwd=out, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    results: dict[str, dict[str, str]] = {}
    for checks in sorted(out.glob("server-*/checks.json")):
        scenario = re.sub(r"^server-(.*)-\d{4}-\d\d-\d\dT[\d-]+Z$", r"\1", checks.parent.name)
        statuses = results.setdefault(scenario, {})
        for check in json.loads(checks.read_text()):
            if statuses.get(check["id"]) not in FAILED:   # an id may repeat: the failure wins
                statuses[check["id"]] = check["status"]
    assert results, f"the suite wrote no results ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return results


@pytest.mark.slow   # ~5-10 s a case: the suite's ~30-40 scenarios, each over fresh connections
@pytest.mark.parametrize(("route", "revision", "known"), CASES)
def test_conformance_suite(suite: Path, gateway: tuple[HttpGateway, dict[str, str]], tmp_path: Path, route: str,
                           revision: str, known: dict[str, dict[str, str]]) -> None:
    gw, urls = gateway
    required = required_scenarios(suite, revision)
    assert len(required) > 25, required
    results = run_suite(suite, urls[route], revision, tmp_path)
    missing = [scenario for scenario in required if scenario not in results]
    assert not missing, f"required scenarios without results: {missing}"
    failing = {scenario: sorted(check for check, status in results[scenario].items() if status in FAILED)
               for scenario in required}
    unexpected = {scenario: checks for scenario, checks in failing.items()
                  if checks != sorted(known.get(scenario, {}))}
    assert not unexpected, (
        f"failing checks differ from the known ones (scenario: failing now; known: {known}):\n"
        + "\n".join(f"  {scenario}: {checks}" for scenario, checks in unexpected.items())
        + f"\ngateway log:\n{gw.log()[-3000:]}")
    assert set(known) <= set(required), f"known failures of scenarios not required: {set(known) - set(required)}"
