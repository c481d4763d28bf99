"""`python -m load dump-cost`: the gateway without and with --dump, driven at the same time."""
from __future__ import annotations

import json
import os

from load import __main__ as load_main, dump_cost, procfs


def children() -> list:
    return sorted(procfs.descendants(procfs.scan_processes(), os.getpid()))


def run_json(capsys, *argv: str):
    status = load_main.main(["dump-cost", "--json", "--rounds", "1", "--duration", "1.5", "-c", "2", *argv])
    return status, json.loads(capsys.readouterr().out)


def test_both_gateways_are_driven_and_b_dumps(capsys):
    before = children()
    status, result = run_json(capsys)
    assert status == 0, json.dumps(result, indent=1)[:3000]
    assert result["mismatches"] == 0 and result["errors"] == 0
    (rnd,) = result["rounds"]
    assert rnd["a"]["calls_per_s"] > 0 and rnd["b"]["calls_per_s"] > 0
    assert rnd["ratio"] == rnd["b"]["calls_per_s"] / rnd["a"]["calls_per_s"]
    assert rnd["dump"]["records"] > 4 * 100 and rnd["dump"]["dropped"] == 0   # every frame at four hops
    assert result["throughput_kept"]["median"] == rnd["ratio"]
    assert "throughput kept with dumps on" in dump_cost.render(result)
    assert children() == before


def test_control_runs_b_without_dumps(capsys):
    status, result = run_json(capsys, "--control")
    assert status == 0, json.dumps(result, indent=1)[:3000]
    (rnd,) = result["rounds"]
    assert "dump" not in rnd and result["config"]["control"] is True and rnd["ratio"] > 0
    assert "neither dumping (control)" in dump_cost.render(result)
