"""The policy benchmark runs end to end and reports both comparisons (figures are
measured, not asserted: the machine is shared)."""
from __future__ import annotations

import json
import subprocess
import sys

from gateway import ROOT


def test_policy_bench_reports_both_comparisons():
    out = subprocess.run([sys.executable, "-m", "load", "policy-bench", "-n", "30", "--rounds", "2", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["tools_list"]) == {"uncached", "cached", "ratio_of_medians"}
    assert set(result["ping"]) == {"no_policy", "five_interceptors", "ratio_of_medians"}
    for pair in ("tools_list", "ping"):
        for side, figures in result[pair].items():
            if side != "ratio_of_medians":
                assert figures["n"] == 60 and figures["median_us"] > 0
