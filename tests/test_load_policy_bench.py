"""The policy benchmark runs end to end and reports its comparisons, over stdio and over HTTP
in both eras (figures are measured, not asserted: the machine is shared)."""
from __future__ import annotations

import json
import subprocess
import sys

from gateway import ROOT


def test_policy_bench_reports_both_comparisons():
    out = subprocess.run([sys.executable, "-m", "load", "policy-bench", "-n", "30", "--rounds", "2", "--json",
                          "--transport", "stdio"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["tools_list"]) == {"uncached", "cached", "ratio_of_medians", "added_median_us"}
    assert set(result["ping"]) == {"no_policy", "five_interceptors", "ratio_of_medians", "added_median_us"}
    for pair in ("tools_list", "ping"):
        for side, figures in result[pair].items():
            if side not in ("ratio_of_medians", "added_median_us"):
                assert figures["n"] == 60 and figures["median_us"] > 0
    # guardrails: a small call and a 1 MiB result, each without and with every local detector
    for pair, n in (("guardrails_call", 30 * 4), ("guardrails_1mib", 10 * 4)):
        assert set(result[pair]) == {f"{pair}_off", f"{pair}_on", "ratio_of_medians", "added_median_us"}
        assert result[pair][f"{pair}_on"]["n"] == n and result[pair][f"{pair}_on"]["median_us"] > 0


def test_policy_bench_text_report_over_stdio():
    """The table a person reads (no --json) prints every pair's sides and ratio."""
    out = subprocess.run([sys.executable, "-m", "load", "policy-bench", "-n", "20", "--rounds", "1",
                          "--transport", "stdio", "--pairs", "tools_list,ping"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no_policy: median" in out.stdout and "five_interceptors: median" in out.stdout
    assert "cached tools/list is" in out.stdout and "added_median_us" not in out.stdout


def test_policy_bench_over_http_runs_each_pair_in_both_eras():
    out = subprocess.run([sys.executable, "-m", "load", "policy-bench", "--transport", "http", "--eras",
                          "modern,legacy", "--pairs", "tools_list,tools_call,aggregate", "--http-rounds", "1",
                          "--duration", "1", "-c", "2", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout)
    names = {k for k in result if k != "config"}
    assert names == {"http_tools_list_modern", "http_tools_list_legacy", "http_tools_call_modern",
                     "http_tools_call_legacy", "http_aggregate_modern"}
    for name in names:
        (one,) = result[name]["rounds"]
        assert "error" not in one, one
        assert one["a"]["calls_per_s"] > 0 and one["b"]["calls_per_s"] > 0 and one["ratio"] > 0
        assert result[name]["mismatches"] == 0 and result[name]["errors"] == 0
