"""The one report writer: tables for the terminal and for markdown, and the live progress bar (``rich``),
rendered without borders or colour so a report reads the same in a terminal, a log and a test."""
from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def fmt(value, digits: int | None = None) -> str:
    """A figure for humans: thousands grouped; one or two decimals where they matter."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return f"{value:,}" if isinstance(value, int) else str(value)
    if digits is not None:
        return f"{value:,.{digits}f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.1f}"
    return f"{value:.2f}"


def signed(value) -> str:
    return "-" if value is None else f"{value:+.1f}"


def times(value, digits: int = 3) -> str:
    """A ratio as ``x1.234``."""
    return "-" if value is None else f"x{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence], indent: int = 2) -> list[str]:
    """Text lines of a table: the first column left-aligned, the figures right-aligned."""
    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    for i, header in enumerate(headers):
        grid.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, str) else fmt(cell) for cell in row))
    out = io.StringIO()
    Console(file=out, width=400, color_system=None, highlight=False, emoji=False).print(grid)
    return [" " * indent + line.rstrip() for line in out.getvalue().splitlines()]


def markdown(headers: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A markdown table (for docs/benchmarks.md and pasted reports)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]


def emit(result: dict, as_json: bool, render: Callable[[dict], str], failed: bool = False) -> int:
    """Print a bench's result (JSON, or ``render``'s text); its exit status: 2 a run failed (its ``errors``,
    or ``failed``), 1 mismatches, 0 all good."""
    print(json.dumps(result, indent=2) if as_json else render(result))
    return 2 if result["errors"] or failed else 1 if result["mismatches"] else 0


@contextmanager
def progress(label: str, total: int | None, duration: float | None, count: Callable[[], int],
             enabled: bool) -> Iterator[None]:
    """A live progress bar on stderr while the block runs (a terminal only): calls done out of
    ``total`` (or time out of ``duration``), calls/s, elapsed. ``count`` is polled by rich."""
    if not enabled:
        yield
        return
    bar = Progress(TextColumn(label[:40]), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[calls]} calls"),
                   TextColumn("{task.fields[rate]}/s"), TimeElapsedColumn(), console=Console(file=sys.stderr),
                   transient=True, refresh_per_second=4)
    task = bar.add_task(label, total=total or duration or None, calls="0", rate="0")
    stop = threading.Event()

    def poll() -> None:
        last_n, last_t = 0, time.monotonic()
        while not stop.wait(0.25):
            n, now = count(), time.monotonic()
            rate = (n - last_n) / max(1e-9, now - last_t)
            last_n, last_t = n, now
            bar.update(task, completed=n if total else min(bar.tasks[0].elapsed or 0.0, duration or 0.0),
                       calls=f"{n:,}", rate=f"{rate:,.0f}")

    poller = threading.Thread(target=poll, daemon=True)
    with bar:
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join(2)
