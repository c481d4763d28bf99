"""Forked driver processes, for when one process is the limit: each runs its share of the clients and
sends its result back whole over a pipe; a failure comes back as a message, and none is left behind."""
from __future__ import annotations

import multiprocessing

from . import BenchError


def split(total: int, parts: int) -> list:
    """``total`` in ``parts`` shares as even as can be, the larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def start(work, args_per_worker: list) -> tuple[list, list]:
    """Fork one process per argument tuple, running ``work(pipe, *args)``; (processes, pipes)."""
    ctx = multiprocessing.get_context("fork")
    procs, pipes = [], []
    for args in args_per_worker:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, work, args), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    return procs, pipes


def _child(pipe, work, args) -> None:
    try:
        pipe.send(("result", work(pipe, *args)))
    except BaseException as exc:   # report, never leave the parent waiting
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        pipe.close()


def receive(pipe, what: str = "result", timeout: float | None = None):
    """The next message from a worker, or a BenchError saying why there is none."""
    if timeout is not None and not pipe.poll(timeout):
        raise BenchError(f"a worker sent no {what} in {timeout:.0f}s")
    try:
        tag, payload = pipe.recv()
    except EOFError:
        raise BenchError(f"a worker process died before sending its {what}") from None
    if tag == "error":
        raise BenchError(f"worker: {payload}")
    return payload


def reap(procs: list, pipes: list, grace: float = 5.0) -> None:
    """End the workers (joined, killed past ``grace``) and close their pipes."""
    for proc in procs:
        proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    for pipe in pipes:
        pipe.close()
