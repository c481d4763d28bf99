"""``python -m load COMMAND`` (installed: ``wire-gateway load``, ``wire-gateway-load``): each command is
``add_arguments(parser)`` and ``run(args) -> exit status`` over the shared pieces."""
from __future__ import annotations

import argparse
import sys

from . import bench, dump_cost, fast_echo, http_bench, policy_bench, run, stdio_bench, topology

COMMANDS = {
    "run": (run.add_arguments, run.run,
            "replay a recorded fixture as concurrent virtual sessions, every answer checked"),
    "bench": (bench.add_arguments, bench.run,
              "the standard scenarios, gateway vs direct, alternating; writes docs/benchmarks.md"),
    "stdio-bench": (stdio_bench.add_arguments, stdio_bench.run,
                    "compare a stdio MCP server direct vs through the gateway"),
    "stdio-ceiling": (stdio_bench.add_ceiling_arguments, stdio_bench.run_ceiling,
                      "measure the stdio bench driver itself against fast-echo"),
    "http-bench": (http_bench.add_arguments, http_bench.run,
                   "compare an MCP server over Streamable HTTP direct vs through the gateway"),
    "dump-cost": (dump_cost.add_arguments, dump_cost.run,
                  "what frame dumps cost: the gateway without and with --dump, at the same time"),
    "policy-bench": (policy_bench.add_arguments, policy_bench.run,
                     "what the policy chain costs (ping) and what its tools/list cache saves"),
    "topology": (topology.add_arguments, topology.run,
                 "Redis, N gateways and HAProxy on 127.0.0.1: the balancer's cost and Redis round trips"),
    "fast-echo": (fast_echo.add_arguments, fast_echo.run, "a minimal, fast echo MCP server (the ceiling's target)"),
}


def build_parser(prog: str = "python -m load") -> argparse.ArgumentParser:
    """One sub-parser per command; the command's ``run`` is stored in ``args.run``."""
    parser = argparse.ArgumentParser(prog=prog, description="Load and benchmark tools for wire-gateway.")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run_command, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run_command)
    return parser


def main(argv=None, prog: str | None = None) -> int:
    """``python -m load``, ``wire-gateway load`` and ``wire-gateway-load``."""
    if prog is None:
        prog = "python -m load" if __package__ == "load" else "wire-gateway-load"
    args = build_parser(prog).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
