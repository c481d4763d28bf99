"""`wire-gateway guardrails`: the detector catalogue, detection quality over the labelled corpus,
and a quick check of a piece of text."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wire_gateway.guardrails.detectors import DETECTORS
from wire_gateway.guardrails.quality import corpus_dir, evaluate, load_corpus

RECALL, PRECISION = 0.95, 0.98     # the bar every detector is held to on the corpus (docs/guardrails.md)


def add_guardrails_parser(sub: Any) -> None:
    p = sub.add_parser("guardrails", help="guardrail detectors: catalogue, quality on the corpus, try a text")
    g = p.add_subparsers(dest="guardrails_command", required=True, metavar="ACTION")
    g.add_parser("detectors", help="list the local detectors by group")
    q = g.add_parser("eval", help="precision and recall per detector over the labelled corpus")
    q.add_argument("--corpus", type=Path, help=f"a directory of *.jsonl cases (default: {corpus_dir()})")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = g.add_parser("scan", help="which detectors match a text (from the argument, or stdin)")
    q.add_argument("text", nargs="?")
    q.add_argument("--key", help="the JSON key the text sits under (some detectors read it)")


def run_guardrails_command(args: argparse.Namespace) -> int:
    if args.guardrails_command == "detectors":
        table = Table("group", "detector", "finds")
        for d in sorted(DETECTORS.values(), key=lambda d: (d.group, d.name)):
            table.add_row(d.group, d.name, d.summary)
        Console().print(table)
        return 0
    if args.guardrails_command == "scan":
        text = args.text if args.text is not None else sys.stdin.read()
        found = {n: [text[s.start:s.end] for s in d.detect(text, args.key)] for n, d in DETECTORS.items()}
        print(json.dumps({n: m for n, m in found.items() if m}, indent=2, ensure_ascii=False))
        return 0
    directory = args.corpus or corpus_dir()
    if not directory.is_dir():
        print(f"wire-gateway guardrails eval: no corpus at {directory}; pass --corpus DIR", file=sys.stderr)
        return 1
    cases = load_corpus(directory)
    scores = evaluate(cases)
    below = [n for n, s in scores.items() if s.recall < RECALL or s.precision < PRECISION]
    if args.json:
        print(json.dumps({"cases": len(cases), "below_bar": below, "detectors": {
            n: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": round(s.precision, 4), "recall": round(s.recall, 4),
                "misses": s.misses, "false_alarms": s.false_alarms} for n, s in scores.items()}}, indent=2))
    else:
        table = Table("detector", "positives", "precision", "recall", "false alarms", "misses",
                      title=f"{len(cases)} cases in {directory}")
        for n, s in scores.items():
            flag = "" if n not in below else " [red](below the bar)[/red]"
            table.add_row(n + flag, str(s.tp + s.fn), f"{s.precision:.3f}", f"{s.recall:.3f}",
                          ", ".join(s.false_alarms), ", ".join(s.misses))
        Console().print(table)
    return 1 if below else 0
