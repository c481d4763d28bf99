"""Entry point: ``python -m load SUBCOMMAND [options]``.

Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status), so that
adding a tool means adding one line to ``SUBCOMMANDS``.
"""
import argparse
import sys

from . import bench, dump_cost, fast_echo, http_bench, policy_bench, run, stdio_bench, stdio_ceiling

SUBCOMMANDS = {
    "run": (run, "replay a recorded fixture as concurrent virtual sessions, every answer checked"),
    "bench": (bench, "the standard scenarios, gateway vs direct, alternating; writes docs/benchmarks.md"),
    "stdio-bench": (stdio_bench, "compare a stdio MCP server direct vs through the gateway"),
    "stdio-ceiling": (stdio_ceiling, "measure the bench driver itself against fast-echo"),
    "http-bench": (http_bench, "compare an MCP server over Streamable HTTP direct vs through the gateway"),
    "dump-cost": (dump_cost, "what frame dumps cost: the gateway without and with --dump, at the same time"),
    "policy-bench": (policy_bench, "what the policy chain costs (ping) and what its tools/list cache saves"),
    "fast-echo": (fast_echo, "a minimal, fast echo MCP server (the ceiling's target)"),
}


def build_parser(prog: str = "python -m load") -> argparse.ArgumentParser:
    """One sub-parser per tool; the chosen module is stored in ``args.module``."""
    parser = argparse.ArgumentParser(prog=prog, description="Load and benchmark tools for wire-gateway.")
    subs = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def main(argv=None, prog: str | None = None) -> int:
    """``python -m load``, ``wire-gateway load`` and ``wire-gateway-load``."""
    if prog is None:
        prog = "python -m load" if __package__ == "load" else "wire-gateway-load"
    args = build_parser(prog).parse_args(argv)
    return args.module.run(args)


if __name__ == "__main__":
    sys.exit(main())
