"""The local detectors, by name and by group (docs/guardrails.md has the catalogue).

`resolve(["pii", "aws_key"])` expands group names to detector names; `DETECTORS[name]` is
the detector. Custom keyword and regex lists are built per policy (`custom.py`).
"""
from __future__ import annotations

from wire_gateway.guardrails.detectors import arguments, injection, pii, secrets
from wire_gateway.guardrails.detectors.base import Detect, Detector, Span

__all__ = ["DETECTORS", "GROUPS", "Detect", "Detector", "Span", "resolve"]

DETECTORS: dict[str, Detector] = {d.name: d for m in (pii, secrets, injection, arguments) for d in m.DETECTORS}

GROUPS: dict[str, tuple[str, ...]] = {}
for _d in DETECTORS.values():
    GROUPS[_d.group] = (*GROUPS.get(_d.group, ()), _d.name)


def resolve(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Detector names for a list of detector and group names, in order, each once.
    Raises KeyError naming the first unknown one."""
    out: dict[str, None] = {}
    for name in names:
        if name in GROUPS:
            out.update(dict.fromkeys(GROUPS[name]))
        elif name in DETECTORS:
            out[name] = None
        else:
            raise KeyError(name)
    return tuple(out)
