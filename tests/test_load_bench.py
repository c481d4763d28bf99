"""`python -m load bench --quick`: real targets, the report written into an existing file
without losing what it held, scenarios whose feature is missing reported with the reason."""
import json
import subprocess
import sys
from pathlib import Path

from load import bench

ROOT = Path(__file__).resolve().parent.parent
HISTORY = "# Benchmarks\n\nIntro paragraph.\n\n## stdio: an older section\n\n| old | table |\n"


def run_bench(*args):
    return subprocess.run([sys.executable, "-m", "load", "bench", "--quick", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_quick_bench_writes_its_section_and_keeps_the_history(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text(HISTORY)
    proc = run_bench("--only", "stdio echo,tools/list cached,http echo dump on", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nIntro paragraph.\n")
    assert text.endswith("## stdio: an older section\n\n| old | table |\n")
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    assert "python -m load bench --quick --only" in text
    assert "2 cores" in text or f"{__import__('os').cpu_count()} cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| stdio echo |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert all(row.split("|")[-3].strip() == "0" for row in rows)   # mismatches
    for name in ("tools/list cached", "http echo dump on"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        # either measured (merged with the feature) or said why not: never silently absent
        assert "not available: " in row or row.split("|")[2].strip() in ("1", "2")
    again = run_bench("--only", "stdio echo", "--out", str(out))
    assert again.returncode == 0
    text = out.read_text()
    assert text.count(bench.BEGIN) == 1 and "tools/list cached" not in text


def test_quick_bench_json_and_no_write(tmp_path):
    out = tmp_path / "untouched.md"
    proc = run_bench("--only", "http echo", "--out", str(out), "--no-write", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not out.exists()
    doc = json.loads(proc.stdout)
    (scenario,) = doc["scenarios"]
    assert scenario["name"] == "http echo"
    for level in ("1", "2"):
        fig = scenario["levels"][level]
        assert fig["mismatches"] == 0 and fig["errors"] == 0
        assert fig["direct"]["calls_per_s"] > 0 and fig["gateway"]["calls_per_s"] > 0
        assert len(fig["runs"]["direct"]) == len(fig["runs"]["gateway"]) == 1
    assert doc["machine"]["cpus"] and doc["machine"]["python"]


def test_the_cached_tools_list_scenario_is_answered_by_the_cache(tmp_path):
    """The echo server says its lists go stale at once unless told otherwise (ttlMs 0), and the
    gateway honours that: the scenario's server must allow caching, or it measures misses."""
    import urllib.request

    from http_gateway import HttpGateway

    scenario = next(s for s in bench.SCENARIOS if s.name == "tools/list cached")
    server_log = tmp_path / "echo.jsonl"
    servers = json.loads(json.dumps(scenario.b.config["servers"]))
    servers["echo"]["args"] += ["--log", str(server_log)]
    gateway = HttpGateway(tmp_path, servers)
    try:
        for i in range(3):
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/list", "params": {"_meta": bench.META}})
            req = urllib.request.Request(gateway.url("echo"), body.encode(), method="POST", headers={
                "content-type": "application/json", "accept": "application/json, text/event-stream",
                "mcp-protocol-version": bench.MODERN, "mcp-method": "tools/list"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read())["result"]["tools"]
    finally:
        gateway.stop()
    listed = [line for line in server_log.read_text().splitlines() if '"tools/list"' in line]
    assert len(listed) == 1, listed
