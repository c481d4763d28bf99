"""Detection quality over the labelled corpus (fixtures/guardrails/*.jsonl): precision and
recall per detector, as `wire-gateway guardrails eval` prints them.

A corpus line is {"text": "...", "key": "api_key" (optional), "labels": ["email", ...],
"note": "why this case is here"}. `labels` names every detector that must fire on the text;
an empty list is a near miss that none may fire on. Every detector runs on every case, so a
detector that fires on another group's case counts as a false positive too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire_gateway.guardrails.detectors import DETECTORS, Detector


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    misses: list[str] = field(default_factory=list)         # texts it should have found (first few)
    false_alarms: list[str] = field(default_factory=list)   # texts it should have left alone

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def corpus_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "fixtures" / "guardrails"


def load_corpus(directory: Path | None = None) -> list[dict[str, Any]]:
    cases = []
    for path in sorted((directory or corpus_dir()).glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                case = json.loads(line)
                case["where"] = f"{path.name}:{n}"
                unknown = [x for x in case.get("labels", []) if x not in DETECTORS]
                if unknown:
                    raise ValueError(f"{case['where']}: unknown detector label(s) {unknown}")
                cases.append(case)
    return cases


def evaluate(cases: list[dict[str, Any]], detectors: dict[str, Detector] | None = None,
             keep: int = 5) -> dict[str, Score]:
    detectors = detectors if detectors is not None else DETECTORS
    scores = {name: Score() for name in detectors}
    for case in cases:
        text, key, labels = case["text"], case.get("key"), set(case.get("labels", ()))
        for name, detector in detectors.items():
            fired = bool(detector.detect(text, key))
            score = scores[name]
            if fired and name in labels:
                score.tp += 1
            elif fired:
                score.fp += 1
                if len(score.false_alarms) < keep:
                    score.false_alarms.append(case["where"])
            elif name in labels:
                score.fn += 1
                if len(score.misses) < keep:
                    score.misses.append(case["where"])
    return scores
