"""The stdio bench (`python -m load stdio-bench`) measures and checks answers.

These run the real tool in-process with a small -n against real server
processes: one run against the echo fixture in both slots (every figure
present, nothing mismatched, nothing left running), and one against a
deliberately wrong server, to prove that bad answers are counted and
reported rather than silently timed.
"""
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from load import __main__ as load_main, procfs, stdio_bench

ECHO = Path(__file__).resolve().parent.parent / "fixtures" / "servers" / "echo.py"
FIGURES = {
    "calls", "concurrency", "seconds", "calls_per_s", "p50_us", "p90_us", "p99_us", "max_us",
    "target_cpu_us_per_call", "tree_cpu_us_per_call", "driver_cpu_us_per_call", "other_load_cpus",
    "mismatches", "mismatch_kinds", "mismatch_examples", "notifications",
}

# Answers every call, but call 3k with someone else's id and call 3k+1 with
# the wrong text.  Written plainly (json, line by line): speed is not the point.
WRONG_SERVER = textwrap.dedent('''
    import json, sys
    calls = 0
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue
        if msg["method"] == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "wrong", "version": "0"}}
            answer_id = msg["id"]
        else:
            calls += 1
            text = msg["params"]["arguments"]["text"]
            answer_id = msg["id"] + 10**9 if calls % 3 == 0 else msg["id"]
            if calls % 3 == 1:
                text = "not " + text
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": answer_id, "result": result}) + "\\n")
        sys.stdout.flush()
''')


def children_of_this_process() -> list:
    table = procfs.scan_processes()
    return sorted(procfs.descendants(table, os.getpid()))


def run_json(capsys, direct: str, gateway: str, *extra: str):
    argv = ["stdio-bench", "--direct", direct, "--gateway", gateway, "--json",
            "-n", "300", "--rounds", "1", "--warmup", "50", "--concurrency", "1,8",
            "--timeout", "20", *extra]
    status = load_main.main(argv)
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("placement", [[], ["--pin", "none"], ["--spin"]], ids=["split", "unpinned", "spin"])
def test_echo_fixture_in_both_slots_measures_everything(capsys, placement):
    before = children_of_this_process()
    affinity = os.sched_getaffinity(0)
    cmd = shlex.join([sys.executable, str(ECHO)])
    status, result = run_json(capsys, cmd, cmd, *placement)

    assert status == 0, result
    assert result["mismatches"] == 0 and result["errors"] == 0
    assert result["config"]["n"] == 300 and result["config"]["concurrency"] == [1, 8]
    assert set(result["summary"]) == {"sequential", "inflight_8"}
    (rnd,) = result["rounds"]
    for slot in ("direct", "gateway"):
        run = rnd[slot]
        assert "error" not in run and run["warmup_mismatches"] == 0
        assert run["shutdown"]["stopped_by"] == "stdin-eof" and run["shutdown"]["stragglers"] == []
        assert set(run["scenarios"]) == {"sequential", "inflight_8"}
        for name, figures in run["scenarios"].items():
            assert set(figures) >= FIGURES, name
            assert figures["calls"] == 300 and figures["mismatches"] == 0
            assert figures["calls_per_s"] > 0
            assert 0 < figures["p50_us"] <= figures["p90_us"] <= figures["p99_us"] <= figures["max_us"]
    for entry in result["summary"].values():
        assert entry["direct"]["rounds"] == entry["gateway"]["rounds"] == 1
        comparison = entry["gateway_vs_direct"]
        assert comparison["throughput_ratio"] > 0
        assert isinstance(comparison["added_p50_us"], float)
        assert "gateway_cpu_us_per_call" in comparison
    assert children_of_this_process() == before  # nothing left running
    assert os.sched_getaffinity(0) == affinity  # --pin restored the caller's CPUs


def test_wrong_answers_are_counted_and_reported(tmp_path, capsys):
    script = tmp_path / "wrong_server.py"
    script.write_text(WRONG_SERVER)
    wrong = shlex.join([sys.executable, str(script)])
    status, result = run_json(capsys, wrong, wrong)

    assert status == 1
    assert result["errors"] == 0
    assert result["mismatches"] > 0
    for slot in ("direct", "gateway"):
        for name, figures in result["rounds"][0][slot]["scenarios"].items():
            # every answer is still consumed, two in three of them are wrong
            assert figures["calls"] == 300, name
            assert figures["mismatches"] >= 150, name
            assert {"unknown_id", "wrong_content"} <= set(figures["mismatch_kinds"]), name
            assert figures["mismatch_examples"], name
        assert result["summary"]["sequential"][slot]["mismatches"] > 0

    stdio_bench.run(_namespace(wrong))  # the text report names them too
    text = capsys.readouterr().out
    assert "unknown_id" in text and "wrong_content" in text
    assert "total mismatches: 0" not in text


def _namespace(cmd: str):
    return load_main.build_parser().parse_args(
        ["stdio-bench", "--direct", cmd, "--gateway", cmd, "-n", "60", "--rounds", "1",
         "--warmup", "10", "--concurrency", "1", "--timeout", "20"])


# Answers initialize, then never anything: only the watchdog can end the run.
MUTE_SERVER = textwrap.dedent('''
    import json, sys
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("method") == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {},
                      "serverInfo": {"name": "mute", "version": "0"}}
            print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
''')


@pytest.mark.parametrize("placement", [[], ["--spin"]], ids=["sleeping", "spin"])
def test_a_silent_server_is_timed_out_and_killed(tmp_path, capsys, placement):
    script = tmp_path / "mute_server.py"
    script.write_text(MUTE_SERVER)
    mute = shlex.join([sys.executable, str(script)])
    before = children_of_this_process()
    status, result = run_json(capsys, mute, mute, "--timeout", "1", *placement)

    assert status == 2 and result["errors"] == 2
    for slot in ("direct", "gateway"):
        run = result["rounds"][0][slot]
        assert "timed out after 1s" in run["error"]
        assert run["shutdown"]["stopped_by"] == "watchdog"
    assert children_of_this_process() == before
