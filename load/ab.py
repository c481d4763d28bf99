"""The one A/B runner: a baseline (A) against a candidate (B) in the same invocation, as ratios.

``alternate``: rounds of A then B, each on a fresh target, medians compared (``compare_medians``);
``side_by_side``: A and B together on one CPU, each driven by its own ``load run`` for the same time,
so both see the same machine phases (``apart`` for the rounds, ``ratio_summary`` over them).
"""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

from . import BenchError
from .assets import CHECKOUT, tool
from .procfs import pinned
from .stats import median, ratio


def alternate(rounds: int, slots: dict[str, Callable[[], dict]]) -> list[dict]:
    """``rounds`` times every slot in order (A B A B ...): [{slot: its run}] per round."""
    return [{name: run() for name, run in slots.items()} for _ in range(rounds)]


def compare_medians(runs_a: list, runs_b: list, picks: dict[str, Callable[[dict], float | None]],
                    digits: int = 3) -> dict:
    """{figure: {"a", "b", "ratio_b_to_a"}}: medians over rounds of each side, and B over A."""
    out = {}
    for name, pick in picks.items():
        a, b = median(pick(r) for r in runs_a), median(pick(r) for r in runs_b)
        out[name] = {"a": a, "b": b, "ratio_b_to_a": ratio(a, b, digits)}
    return out


def load_run(url: str, fixture: str, concurrency: int, *extra: str) -> list:
    """The argv of a child ``load run --json`` against ``url``."""
    return [*tool("run"), "--target", url, "--fixture", fixture, "-c", str(concurrency), *extra, "--json"]


def read_run(out: str, what: str, err: str = "") -> dict:
    """The run of one ``load run --json`` (``out``; ``err``: its stderr), with its total mismatches and errors."""
    try:
        doc = json.loads(out)
        return {**doc["runs"][0], "mismatches": doc["mismatches"], "errors": doc["errors"]}
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"{what}: the load run printed no result ({exc}): {(out + err)[-500:]!r}") from None


def side_by_side(starters: list, fixtures: list, concurrency: int, duration: float, warmup_calls: int,
                 warmups: list | None = None, extras: list | None = None) -> tuple[dict, list]:
    """Start A and B (``starters``: each returns an HTTP target), warm them one after the other, drive both
    at once for ``duration`` seconds, stop them; (result, the targets). ``extras``: more ``load run``
    arguments per side (e.g. B's API key header)."""
    timeout = duration + 120.0
    extras = extras or [[], []]
    targets: list = []
    try:
        for start in starters:
            targets.append(start())
        urls = [str(t.url) for t in targets]
        for url, fixture, label, extra in zip(urls, warmups or fixtures, "AB", extras):
            warm = subprocess.run(load_run(url, fixture, concurrency, "-n", str(warmup_calls), *extra),
                                  capture_output=True, text=True, cwd=CHECKOUT, timeout=timeout)
            read_run(warm.stdout, f"warm-up {label}")
        drivers = [subprocess.Popen(load_run(url, fixture, concurrency, "--duration", f"{duration}s", *extra),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=CHECKOUT)
                   for url, fixture, extra in zip(urls, fixtures, extras)]
        try:
            outs = [driver.communicate(timeout=timeout)[0] for driver in drivers]
        finally:
            for driver in drivers:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
        a, b = ({k: read_run(out, what)[k] for k in ("calls_per_s", "mismatches", "errors")}
                for out, what in zip(outs, "AB"))
        result = {"a": a, "b": b, "ratio": b["calls_per_s"] / a["calls_per_s"] if a["calls_per_s"] else None}
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        result = {"error": str(exc)}
    finally:
        for target in targets:
            target.stop()
    return result, targets


def apart(rounds: int, one_round: Callable[[set], dict]) -> tuple[list, set, set | None]:
    """``rounds`` times ``one_round(target CPUs)``, the targets on the last CPU and this process (and the
    drivers it starts) on the others; (results, target CPUs, driver CPUs)."""
    allowed = sorted(os.sched_getaffinity(0))
    target_cpus, driver_cpus = {allowed[-1]}, set(allowed[:-1]) or None
    with pinned(driver_cpus):
        return [one_round(target_cpus) for _ in range(rounds)], target_cpus, driver_cpus


def ratio_summary(results: list) -> dict:
    """Median, min and max of the rounds' B/A, and the mismatches and errors of every run."""
    ratios = [r["ratio"] for r in results if r.get("ratio")]
    sides = [r[s] for r in results for s in ("a", "b") if s in r]
    return {"median": median(ratios), "min": min(ratios, default=None), "max": max(ratios, default=None),
            "mismatches": sum(s["mismatches"] for s in sides),
            "errors": sum(1 for r in results if "error" in r) + sum(s["errors"] for s in sides)}
