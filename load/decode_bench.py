"""What `wire.frame.decode` costs, this checkout against another one, in one run.

Usage: python -m load.decode_bench --before /work/main [--rounds 7]. Both checkouts' `wire_gateway`
are imported side by side and their `decode` timed alternately on the same frames; each figure is the
best of `rounds` runs; the ratio is after / before.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent.parent


def frames() -> dict[str, bytes]:
    source = "".join(p.read_text(encoding="utf-8") for p in sorted((HERE / "wire_gateway").rglob("*.py")))
    text = (source * (1 + 1_000_000 // len(source)))[:1_000_000]
    items = [{"id": f"item-{i}", "name": f"thing {i}", "size": i * 7, "tags": ["a", "b"], "ok": i % 2 == 0}
             for i in range(9000)]
    return {
        "tools/call request": b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"echo",'
                              b'"arguments":{"text":"hello world"},"_meta":{"progressToken":17}}}',
        "echo answer": b'{"jsonrpc":"2.0","id":17,"result":{"content":[{"type":"text","text":"hello world"}],'
                       b'"isError":false}}',
        "echo answer (id last)": b'{"result":{"content":[{"type":"text","text":"hello world"}],"isError":false},'
                                 b'"jsonrpc":"2.0","id":17}',
        "1 MB text answer": orjson.dumps({"jsonrpc": "2.0", "id": 17, "result": {
            "content": [{"type": "text", "text": text}], "isError": False}}),
        "1 MB structured answer": orjson.dumps({"jsonrpc": "2.0", "id": 17, "result": {
            "content": [], "structuredContent": {"items": items}}}),
    }


def load_decode(root: Path) -> Callable[[bytes], Any]:
    for name in [n for n in sys.modules if n == "wire_gateway" or n.startswith("wire_gateway.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        from wire_gateway.wire.frame import decode
    finally:
        sys.path.remove(str(root))
    return decode


def best(fn: Callable[[bytes], Any], raw: bytes, rounds: int) -> float:
    n = max(3, min(20000, 2_000_000 // max(len(raw), 100)))
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn(raw)
        times.append((time.process_time() - start) / n)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the checkout to compare with (its root directory)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    before = load_decode(Path(args.before).resolve())
    after = load_decode(HERE)
    print(f"{'frame':26} {'bytes':>9} {'before us':>10} {'after us':>10} {'ratio':>6}")
    for name, raw in frames().items():
        b = a = float("inf")
        for _ in range(5):             # alternate, so drift on a shared machine hits both alike
            b = min(b, best(before, raw, args.rounds))
            a = min(a, best(after, raw, args.rounds))
        print(f"{name:26} {len(raw):9d} {b * 1e6:10.2f} {a * 1e6:10.2f} {a / b:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
