"""Frame dumps: masking, the writer (drops instead of blocking, rotation, flush on close),
and the tools (`dump show`, `dump stats`, `dump fixture`) on a small recorded dump."""
from __future__ import annotations

import base64
import json
import os
import pty
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from gateway import LineClient, write_config

from wire_gateway.dump import encode
from wire_gateway.dump.fixture import FixtureError, read_fixture
from wire_gateway.dump.mask import FrameMasker
from wire_gateway.dump.tap import C2G, DIRECTIONS as DIRECTIONS_ALL, G2C, Tap
from wire_gateway.dump.tools import iter_records, percentile
from wire_gateway.dump.writer import UNWRITTEN_BATCHES, Dumper, DumpSettings
from wire_gateway.wire.frame import decode

ROOT = Path(__file__).resolve().parent.parent
# Why the C encoder's tests skip where it is absent; CI requires it (WIRE_GATEWAY_REQUIRE_C_ENCODER).
NO_C_ENCODER = "the C record encoder is not built (no C compiler at install time)"
DATA = Path(__file__).resolve().parent / "data"
SMALL = DATA / "dump-small.jsonl"   # a real stdio session through the gateway, 10 client frames
ECHO = {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"], "cwd": str(ROOT)}


def dump_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wire_gateway", "dump", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, **kw)


# ---- masking ------------------------------------------------------------------------------

def test_masking_keys_bearer_and_patterns() -> None:
    m = FrameMasker(["sk-live-[0-9]+"])
    raw = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{'
           b'"Authorization":"Bearer abc.def","nested":[{"X-Api-Key":"k1","client_secret":"s"}],'
           b'"note":"use Bearer zzz9 or sk-live-42","Password":{"deep":1},"github_token":"g",'
           b'"accessToken":"a","cookie":"c=1"},"_meta":{"progressToken":"p1"}}}')
    masked, changed = m.mask_raw(raw)
    assert changed
    args = json.loads(masked)["params"]["arguments"]
    assert args == {"Authorization": "***", "nested": [{"X-Api-Key": "***", "client_secret": "***"}],
                    "note": "use Bearer *** or ***", "Password": "***", "github_token": "***",
                    "accessToken": "***", "cookie": "***"}
    assert json.loads(masked)["params"]["_meta"] == {"progressToken": "p1"}   # not a secret


def test_masking_walks_strings_only_when_a_credential_could_be_in_one() -> None:
    """A frame with a secret key but no scheme word, escape or pattern has only its keys looked at
    (the cheap walk); a scheme word in any spelling that parses to one still gets its strings masked."""
    m = FrameMasker()
    plain = b'{"jsonrpc":"2.0","id":1,"result":{"api_key":"k1","text":"nothing here","n":[1,"two"]}}'
    assert not m._strings_may_match(plain)
    masked, changed = m.mask_raw(plain)
    assert changed and json.loads(masked)["result"] == {"api_key": "***", "text": "nothing here", "n": [1, "two"]}
    for note in (b'"BEARER abc"', b'"\\u0042earer abc"', b'"b\\u0061sic abc"', b'"Bearer\\tabc"'):
        raw = b'{"jsonrpc":"2.0","id":1,"result":{"api_key":"k1","note":' + note + b'}}'
        assert m._strings_may_match(raw), raw
        result = json.loads(m.mask_raw(raw)[0])["result"]
        assert result["api_key"] == "***" and result["note"].endswith(" ***") and "abc" not in result["note"], raw
    assert m.is_secret_key("X-Api-Key") and m.is_secret_key("X-Api-Key")   # remembered, same answer
    assert not m.is_secret_key("progressToken")
    huge = "x" * 1_000_000 + "_token"     # a hostile key: judged, never kept
    assert m.is_secret_key(huge) and huge not in m._secret_keys
    for n in range(10_000):               # invented names: the memo stops growing
        m.is_secret_key(f"k{n}")
    assert len(m._secret_keys) <= 4096


def test_masking_leaves_other_frames_byte_for_byte() -> None:
    m = FrameMasker()
    for raw in (b'{"jsonrpc":"2.0","id":1,"result":{"n":123456789012345678901234567890, "x" : 1e400}}',
                b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}',
                b'{"jsonrpc":"2.0","id":2,"result":{"text":"line\\nbreak"}}'):
        assert m.mask_raw(raw) == (raw, False)


def test_masking_sees_through_escapes() -> None:
    masked, changed = FrameMasker().mask_raw(b'{"jsonrpc":"2.0","id":1,"result":{"tok\\u0065n":"hunter2"}}')
    assert changed and b"hunter2" not in masked and json.loads(masked)["result"] == {"token": "***"}


def test_escapes_alone_take_the_short_way_but_hide_nothing() -> None:
    """A backslash sends a frame to the careful path; when resolving its escapes shows no secret
    word and no configured pattern, it is written as it travelled, without the walk."""
    m = FrameMasker(["sk-live-[0-9]+"])
    plain = b'{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"a \\"quoted\\"\\nline\\u00e9"}]}}'
    assert m.mask_raw(plain) == (plain, False)
    for raw, secret in [(b'{"id":1,"result":{"text":"\\u0042earer abc123","k":"x\\n"}}', b"abc123"),
                        (b'{"id":1,"result":{"text":"sk-live-\\u0031234"}}', b"1234"),
                        (b'{"id":1,"result":{"text":"x\\n","api_key":"zz9"}}', b"zz9")]:
        masked, changed = m.mask_raw(raw)
        assert changed and secret not in masked, raw


# A frame with something to mask, in odd places: key names in any case, with prefixes, spelled with
# escapes or with non-ASCII letters that case-insensitive matching folds to ASCII (KELVIN SIGN,
# LONG S, dotless i), pretty-printed, in arrays, credentials after any whitespace, configured patterns.
SECRET_FRAMES = [
    b'{"jsonrpc":"2.0","id":1,"result":{"token":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"a":[{"b":[{"TOKEN":"s1"}]}]}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"X-API-KEY":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"apikey":7}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"Api-Key":{"deep":"s1"}}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"Proxy-Authorization":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"client_secret":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"SECRET":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"PassWord":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"my-passwd":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"Set-Cookie":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"refresh_token":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"accessToken":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"tok\\u0065n":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"api_k\\u0065y":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"\\u0070assword":"s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"x\\"y_token":"s1"}}',
    '{"jsonrpc":"2.0","id":1,"result":{"api_\u212aey":"s1"}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"result":{"pa\u017f\u017fword":"s1"}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"result":{"cook\u0131e":"s1"}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"result":{"AUTHORIZAT\u0130ON":"s1"}}'.encode(),
    b'{ "jsonrpc" : "2.0" , "id" : 1 , "result" : { "token" : "s1" } }',
    b'{\n  "jsonrpc": "2.0",\n  "id": 1,\n  "result": {\n    "Authorization": "s1"\n  }\n}',
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"Bearer s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"use BASIC s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"bearer\\ts1"}}',
    '{"jsonrpc":"2.0","id":1,"result":{"text":"Bearer\u00a0s1"}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"result":{"text":"Ba\u017fic s1"}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"result":{"text":"caf\u00e9 Bearer s1"}}'.encode(),
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"\\u0042earer s1"}}',
    b'{"jsonrpc":"2.0","id":1,"result":["a","b",{"c":["Bearer s1"]}]}',
    b'{"jsonrpc":"2.0","id":"Bearer s1","result":{}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"key sk-live-1234 here"}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"text":"sk-live-\\u00312"}}',
]
CLEAN_FRAMES = [
    b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"t5"}}}',
    b'{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"t5"}],"isError":false}}',
    b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}',
    b'{"jsonrpc":"2.0","id":6,"result":{"text":"a token, a key, a secret and a cookie: basic."}}',
    b'{"jsonrpc":"2.0","id":7,"result":{"tokens":3,"keys":["token","api_key"],"bearer":null,"secret":""}}',
    '{"jsonrpc":"2.0","id":8,"result":{"text":"caf\u00e9 \u00fcber"}}'.encode(),
]
PATTERNS = ["sk-live-[0-9]+"]


def truly_masked(m: FrameMasker, raw: bytes) -> bool:
    """What the full walk says, with no shortcut: the reference for every shortcut."""
    return m.mask_obj(json.loads(raw))[1]


@pytest.fixture(params=["C", "Python"])
def word_test(request: pytest.FixtureRequest) -> str:
    """Which word test `FrameMasker.suspects` uses: C (where built) or Python."""
    from wire_gateway.dump import mask
    if request.param == "C" and mask._c_word_suspects is None:
        pytest.skip(NO_C_ENCODER)
    return request.param


def encoder_flags(raw: bytes) -> bool:
    """Whether the C record encoder's own word test (the one it runs while escaping a frame, when
    no patterns are configured) stops at this frame as a suspect."""
    tap = Dumper(DumpSettings(path=os.devnull)).tap("s", "echo", "http", era="modern")
    record = (1.5, tap.hops[C2G], raw, FRAME.kind, "tools/call", 1, None)
    data, _, stop, suspect = encode.BUILT.encode([record], 0, b"2026-11-21T00:00:00", 1.0, None, encode._KIND_ORDER,
                                                   {}, encode._method_json, encode.to_json, encode._tail, True)
    assert (stop, bool(data)) == ((0, False) if suspect else (1, True)), raw
    return bool(suspect)


def masker(word_test: str, patterns: list[str] = PATTERNS) -> FrameMasker:
    m = FrameMasker(patterns)
    if word_test == "Python":
        m.word_suspects = None
    return m


def test_the_batch_test_never_skips_a_secret(word_test: str) -> None:
    m = masker(word_test)
    for raw in SECRET_FRAMES:
        assert truly_masked(m, raw), raw                       # the examples are meaningful
        for before in ([], CLEAN_FRAMES[:1], CLEAN_FRAMES):    # alone, second, last of a batch
            batch = [*before, raw, *CLEAN_FRAMES[:2]]
            assert len(before) in m.suspects(batch), raw
        masked, changed = m.mask_raw(raw)
        assert changed and b"s1" not in masked and b"1234" not in masked and b"\\u00312" not in masked, raw
        if word_test == "C":       # the encoder's own word test: the same verdict as suspects()
            assert encoder_flags(raw) == bool(m.word_suspects([raw])), raw
    for raw in CLEAN_FRAMES:
        assert not truly_masked(m, raw)
        if word_test == "C":
            assert encoder_flags(raw) == bool(m.word_suspects([raw])), raw
    if word_test == "C":   # raw control bytes (not JSON, but the rule counts them as whitespace)
        for raw in (b'{"a":"Bearer\x01x"}', b'{"a":"basic\x1fx"}', b'{"a":"bearer\x7fx"}'):
            assert encoder_flags(raw) == bool(m.word_suspects([raw])), raw
    # Compact frames with no trigger word are not suspects (the point of the shortcut), nor are
    # secret-ish words where no key SECRET_KEY matches could end (progressToken).
    assert m.suspects([CLEAN_FRAMES[i] for i in (0, 1, 2, 5)] * 10) == set()


def test_the_batch_test_agrees_with_the_full_walk_on_random_frames(word_test: str) -> None:
    """Random messages built from secret-ish and harmless pieces, serialised compactly, pretty,
    ASCII-escaped or not: whenever the full walk masks something, the batch test flagged it."""
    rng = random.Random(20261121)
    words = ["token", "Token", "TOKEN", "key", "api_key", "Api-Key", "apikey", "secret", "client_secret",
             "password", "passwd", "cookie", "set-cookie", "authorization", "x-authorization", "progressToken",
             "keys", "tokens", "name", "text", "b", "Bearer", "basic", "auth", "monkey", "api_\u212aey",
             "pa\u017fsword", "cook\u0131e", "caf\u00e9", "sk-live-99", "Bearer x", "Basic\u00a0y", "\u00e9t\u00e9",
             "idtoken", "SessionToken", "client-secret", "clientSecret", "apiKey", "my_cookie", "x_passwd",
             "\u0131dtoken"]
    cases = [str.lower, str.upper, str.title, str.swapcase, lambda w: w]

    def value(depth: int) -> object:
        r = rng.random()
        if depth > 3 or r < 0.35:
            return rng.choice([None, "", 1, 2.5, True, rng.choice(words), " ".join(rng.sample(words, 3))])
        if r < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(cases)(rng.choice(words)): value(depth + 1) for _ in range(rng.randint(0, 4))}

    m = masker(word_test)
    dumpers = [lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=False),
               lambda o: json.dumps(o, ensure_ascii=False), lambda o: json.dumps(o),
               lambda o: json.dumps(o, indent=1, ensure_ascii=False)]
    flagged = 0
    for _ in range(300):
        batch = [rng.choice(dumpers)({"jsonrpc": "2.0", "id": 1, "result": value(0)}).encode() for _ in range(8)]
        suspects = m.suspects(batch)
        for n, raw in enumerate(batch):
            if word_test == "C":   # per frame, the three word tests are the same test
                assert bool(m.word_suspects([raw])) == bool(m._word_suspects([raw])) == encoder_flags(raw), raw
            if truly_masked(m, raw):
                flagged += 1
                assert n in suspects, raw
                assert m.mask_raw(raw)[1], raw
    assert flagged > 100


# ---- the writer ---------------------------------------------------------------------------------

FRAME = decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}')


def test_flood_with_a_tiny_queue_drops_and_counts(tmp_path: Path, encoder: str) -> None:
    path = tmp_path / "flood.jsonl"

    async def main() -> float:
        dumper = Dumper(DumpSettings(path=str(path), queue=8))
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            start = time.perf_counter()
            for _ in range(5000):        # no checkpoint: the writer cannot run in between
                tap.frame(C2G, FRAME)
            elapsed = time.perf_counter() - start
            await dumper.aclose()
        return elapsed

    elapsed = trio.run(main)
    assert elapsed < 0.5, f"5000 hooks took {elapsed:.3f}s: the hook must not block"
    records = list(iter_records(path))
    frames = [r for r in records if "dropped" not in r]
    drops = [r for r in records if "dropped" in r]
    assert len(frames) == 8
    assert [d["dropped"] for d in drops] == [4992] and drops[0]["dropped_total"] == 4992


def test_the_c_and_python_hooks_queue_the_same_tuples() -> None:
    """The hooks in C (`_records.TapCore`) follow the Python ones' rules: the same tuple per frame
    (a policy given, else the frame's note; put()'s defaults; a hop made for a new direction),
    the writer woken by the frame that makes the queue non-empty, drops counted when full."""
    if encode.BUILT is None:
        pytest.skip(NO_C_ENCODER)
    noted = decode(b'{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}')
    noted.note = "filter"
    seen = []
    for native in (encode.BUILT, None):
        dumper = Dumper(DumpSettings(path=os.devnull, queue=6))
        dumper.native = native
        woken: list[int] = []
        dumper.wake_up = lambda woken=woken, dumper=dumper: woken.append(len(dumper.queue))
        tap = dumper.tap("s", "echo", "stdio", era="legacy")
        assert isinstance(tap, Tap)
        before = time.monotonic()
        tap.frame(C2G, FRAME)
        tap.frame(G2C, noted)
        tap.frame(G2C, noted, "cache")
        tap.put(C2G, b"x")
        tap.put(G2C, b'{"id":7}', noted.kind, "m", 7, "p")
        tap.gateway("gateway->audit", b"{}")
        tap.frame(C2G, FRAME)               # the queue holds 6: dropped, counted
        after = time.monotonic()
        direction_of = {id(hop): direction for direction, hop in tap.hops.items()}
        assert all(before <= record[0] <= after for record in dumper.queue)
        seen.append(([(direction_of[id(record[1])], *record[2:]) for record in dumper.queue], dumper.dropped, woken))
        dumper.queue.clear()
        tap.frame(C2G, FRAME)               # the first frame of the next batch wakes the writer again
        assert woken == [1, 1]
    assert seen[0] == seen[1]
    assert seen[0][0] == [(C2G, FRAME.raw, FRAME.kind, "tools/call", 1, None),
                          (G2C, noted.raw, noted.kind, None, 2, "filter"),
                          (G2C, noted.raw, noted.kind, None, 2, "cache"),
                          (C2G, b"x", None, None, None, None),
                          (G2C, b'{"id":7}', noted.kind, "m", 7, "p"),
                          ("gateway->audit", b"{}", None, None, None, "gateway")]
    assert seen[0][1] == 1


def test_gateway_flood_drops_but_answers_everything(tmp_path: Path) -> None:
    """A real stdio gateway with a one-frame dump queue: every request is still answered,
    and written + dropped add up to every frame at every hop."""
    dump = tmp_path / "dump.jsonl"
    config = write_config(tmp_path, {"echo": ECHO}, dump={"path": str(dump), "queue": 1})
    client = LineClient([sys.executable, "-m", "wire_gateway", "stdio", "--config", str(config)],
                        log_path=tmp_path / "gw.log")
    n = 300
    burst = b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}).encode() + b"\n" for i in range(n))
    client.proc.stdin.write(burst)
    client.proc.stdin.flush()
    ids = {client.recv(timeout=20)["id"] for _ in range(n)}
    assert ids == set(range(n))
    client.proc.stdin.close()
    assert client.proc.wait(20) == 0
    records = list(iter_records(dump))
    dropped = sum(r["dropped"] for r in records if "dropped" in r)
    written = [r for r in records if "dropped" not in r]
    assert dropped > 0
    assert len(written) + dropped == 4 * n


def test_a_slow_disk_costs_frames_not_the_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes taking 0.2 s each: the writing thread falls behind, the writer task waits for it,
    frames pile up and are dropped and counted; the hooks never wait; close writes the rest."""
    path = tmp_path / "slow.jsonl"
    real_write = Dumper._write

    def slow_write(self: Dumper, data: bytes) -> None:
        time.sleep(0.2)
        real_write(self, data)

    monkeypatch.setattr(Dumper, "_write", slow_write)

    async def main() -> tuple[float, int, int]:
        dumper = Dumper(DumpSettings(path=str(path), queue=50))
        hooked, slowest = 0, 0.0
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            end = trio.current_time() + 1.5
            while trio.current_time() < end:
                for _ in range(20):
                    start = time.perf_counter()
                    tap.frame(C2G, FRAME)
                    slowest = max(slowest, time.perf_counter() - start)
                    hooked += 1
                await trio.sleep(0.005)
            await dumper.aclose()
        return slowest, hooked, dumper.batches

    slowest, hooked, batches = trio.run(main)
    assert slowest < 0.05
    # One batch per 50 ms would be 30; the writer waited for the disk (0.2 s a write, 4 queued).
    assert batches <= 1.5 / 0.2 + UNWRITTEN_BATCHES + 2
    records = list(iter_records(path))
    written = [r for r in records if "dropped" not in r]
    dropped = sum(r["dropped"] for r in records if "dropped" in r)
    assert dropped > 0 and len(written) + dropped == hooked


def test_a_failing_disk_ends_the_writer_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_write(self: Dumper, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Dumper, "_write", failing_write)

    async def main() -> None:
        dumper = Dumper(DumpSettings(path=str(tmp_path / "full.jsonl")))
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            for _ in range(3):
                tap.frame(C2G, FRAME)
                await trio.sleep(0.2)
            await trio.sleep_forever()

    with pytest.raises(BaseException) as info:
        trio.run(main)
    assert "No space left" in repr(info.value) or any(
        "No space left" in repr(e) for e in getattr(info.value, "exceptions", ()))


def test_rotation_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "rot.jsonl"

    async def main() -> None:
        dumper = Dumper(DumpSettings(path=str(path), max_bytes=1500, backups=2))
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            for _ in range(12):
                for _ in range(2):
                    tap.frame(C2G, FRAME)
                await trio.sleep(0.05)      # one batch each
            await dumper.aclose()

    trio.run(main)
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files) and not Path(f"{path}.3").exists()
    assert all(f.stat().st_size <= 1500 for f in files)
    monos = [r["mono"] for f in reversed(files) for r in iter_records(f)]
    assert monos == sorted(monos) and len(monos) < 24    # oldest files gone, order kept


def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "flush.jsonl"

    async def main() -> None:
        dumper = Dumper(DumpSettings(path=str(path)))
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            for _ in range(300):
                tap.frame(C2G, FRAME)
            tap.gateway(G2C, b'{"jsonrpc":"2.0","id":1,"error":{"code":-31001,"message":"gone"}}')
            await dumper.aclose()

    trio.run(main)
    records = list(iter_records(path))
    assert len(records) == 301
    assert records[-1]["policy"] == "gateway" and records[-1]["kind"] == "error" and records[-1]["id"] == 1
    assert records[-1]["latency_ms"] >= 0


ENCODERS = ["C", "Python"]


@pytest.fixture(params=ENCODERS)
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Dumpers made in the test use this encoder: the C one (where built) or the Python one."""
    import wire_gateway.dump.writer as writer
    if request.param == "C":
        if encode.BUILT is None:
            pytest.skip(NO_C_ENCODER)
        monkeypatch.setattr(writer, "NATIVE", encode.BUILT)
    else:
        monkeypatch.setattr(writer, "NATIVE", None)
    return request.param


def test_records_follow_the_documented_format(tmp_path: Path, encoder: str) -> None:
    """Key order, the wall-clock time derived from the hook's monotonic stamp, latency at the
    right pair of hops, an era read from the upstream when written, masking, base64."""
    from datetime import datetime

    from wire_gateway.dump.tap import G2S, S2G
    path = tmp_path / "format.jsonl"

    class Upstream:
        era = None

    upstream = Upstream()
    answered_kind = decode(b'{"jsonrpc":"2.0","id":1,"result":{}}').kind

    async def main() -> tuple[float, float]:
        dumper = Dumper(DumpSettings(path=str(path)))
        async with trio.open_nursery() as nursery:
            await nursery.start(dumper.run)
            tap = dumper.tap("s1", "echo", "stdio", era="legacy")
            member = tap.for_server("other", upstream)
            wall_before = time.time()
            tap.frame(C2G, FRAME)
            member.frame(G2S, decode(b'{"jsonrpc":"2.0","id":"a\\u00e9","method":"ping"}'))
            await trio.sleep(0.01)
            upstream.era = "modern"
            member.put(S2G, b'{"jsonrpc":"2.0","id":"a\\u00e9","result":{"api_key":"k9"}}', answered_kind,
                       None, "a\u00e9", "filter")
            tap.put(G2C, b'{"jsonrpc":"2.0","id":1,"result":{"bin":"\xff"}}', answered_kind, None, 1)
            tap.gateway(G2C, b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"error":{"code":1,"message":"m"}}')
            wall_after = time.time()
            await dumper.aclose()
        return wall_before, wall_after

    wall_before, wall_after = trio.run(main)
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    keys = ["ts", "mono", "session", "server", "transport", "era", "dir", "kind", "method", "id", "bytes"]
    for r in records:
        assert list(r)[:len(keys)] == keys
        assert list(r)[-2:] in (["policy", "frame"], ["policy", "frame_b64"])
        assert r["ts"].endswith("Z") and len(r["ts"]) == len("2026-11-21T12:45:43.914564Z")
        wall = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
        assert wall_before - 0.01 <= wall <= wall_after + 0.01
    first, asked, answered, binary, error = records
    assert (first["era"], first["kind"], first["method"], first["id"], first["policy"]) == \
        ("legacy", "request", "tools/call", 1, None)
    assert first["bytes"] == len(FRAME.raw) and first["frame"] == FRAME.raw.decode()
    assert (asked["server"], asked["era"], answered["era"]) == ("other", "modern", "modern")   # when written
    assert answered["id"] == "a\u00e9" and answered["policy"] == "filter" and answered["kind"] == "response"
    assert answered["latency_ms"] >= 10 and json.loads(answered["frame"])["result"] == {"api_key": "***"}
    assert binary["latency_ms"] >= 10 and "frame" not in binary
    assert base64.b64decode(binary["frame_b64"]) == b'{"jsonrpc":"2.0","id":1,"result":{"bin":"\xff"}}'
    assert (error["kind"], error["id"], error["policy"]) == ("error", 123456789012345678901234567890, "gateway")
    monos = [r["mono"] for r in records]
    assert monos == sorted(monos)


def test_the_encoder_takes_the_slow_way_for_what_is_unusual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            encoder: str) -> None:
    """The encoder formats most columns a chunk at a time; these are the cases that leave that path
    for one column: a chunk across a wall-clock second, mixed and huge ids, a large frame seen at two
    hops, a direction beyond the four, and the bound on requests never answered."""
    import math
    from datetime import datetime

    import wire_gateway.dump.writer as writer
    from wire_gateway.dump.tap import G2S, S2G
    dumper = Dumper(DumpSettings(path=str(tmp_path / "unused.jsonl")))
    tap = dumper.tap("s1", "echo", "stdio", era="legacy")
    kinds = {"request": FRAME.kind, "response": decode(b'{"jsonrpc":"2.0","id":1,"result":{}}').kind}

    def records(items: list[tuple]) -> list[dict]:
        return [json.loads(line) for line in dumper._encode(items).splitlines()]

    # Across a second's edge (0.2 s either side: far beyond the clocks' drift between two reads).
    edge = math.ceil(time.time()) + 1 - (time.time() - time.monotonic())
    raw = FRAME.raw
    before, after = records([(edge - 0.2, tap.hops[C2G], raw, kinds["request"], "tools/call", 1, None),
                             (edge + 0.2, tap.hops[G2C], raw, kinds["response"], None, 1, None)])
    walls = [datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() for r in (before, after)]
    assert int(walls[1]) == int(walls[0]) + 1 and abs(walls[1] - walls[0] - 0.4) < 0.01
    assert after["latency_ms"] == pytest.approx(400, abs=0.01)

    # Ids of every shape in one chunk; a large frame at two hops; a direction of its own.
    big = b'{"jsonrpc":"2.0","id":7,"result":{"text":"' + b"\\\\x" * 50_000 + b'"}}'   # escapes: masked the careful way
    huge_id = 123456789012345678901234567890
    out = records([(time.monotonic(), tap.hops[C2G], raw, kinds["request"], "tools/call", "a,b\"c", None),
                   (time.monotonic(), tap.hops[G2S], raw, kinds["request"], "tools/call", huge_id, "filter"),
                   (time.monotonic(), tap.hops[S2G], big, kinds["response"], None, 7, None),
                   (time.monotonic(), tap.hops[G2C], big, kinds["response"], None, None, None),
                   (time.monotonic(), tap.hops["gateway->audit"], raw, kinds["request"], "tools/call", 3, None)])
    assert [r["id"] for r in out] == ["a,b\"c", huge_id, 7, None, 3]
    assert out[1]["policy"] == "filter" and out[0]["policy"] is None
    assert out[2]["frame"] == out[3]["frame"] == big.decode() and "latency_ms" not in out[2]
    assert out[4]["dir"] == "gateway->audit" and out[4]["frame"] == raw.decode()

    # Requests that are never answered are forgotten past the bound, and then get no latency.
    monkeypatch.setattr(writer, "_MAX_OPEN_REQUESTS", 3)
    records([(time.monotonic(), tap.hops[G2S], raw, kinds["request"], "tools/call", n, None) for n in range(100, 105)])
    assert dumper.unanswered >= 3
    (answer,) = records([(time.monotonic(), tap.hops[S2G], raw, kinds["response"], None, 100, None)])
    assert "latency_ms" not in answer and dumper.unanswered == 0


def test_the_c_encoder_is_built_where_ci_requires_it() -> None:
    """CI has a compiler: there a missing C encoder is a broken build, not a slower dump."""
    import wire_gateway.dump.writer as writer
    if encode.BUILT is None:
        assert not os.environ.get("WIRE_GATEWAY_REQUIRE_C_ENCODER"), "the C record encoder did not build"
        pytest.skip(NO_C_ENCODER)
    assert writer.NATIVE is encode.BUILT or os.environ.get("WIRE_GATEWAY_DUMP_ENCODER") == "python"


def _random_batch(rng: random.Random, taps: list, kinds: dict, start: float) -> list[list[tuple]]:
    """The same random hook tuples for each of `taps` (one list each): every shape a frame, id,
    method, policy, kind and time can take, answers to earlier requests, seconds' edges."""
    pieces = ["plain", "\\n", "\\\"", "\\u00e9", "é", "\U0001f600", "\x00", "\x1f\x7f", "\t\r\n\b\f",
              '"api_key":"sk-1"', "Bearer abc.def", "token", "\u2028"]
    batches: list[list[tuple]] = [[] for _ in taps]
    mono = start
    asked: list = []
    for _ in range(rng.randint(1, 150)):
        mono += rng.choice([0.0, 1e-7, 3e-6, 0.001, 0.137, 0.5000005])
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        key = rng.choice(["text", "text", "text", "token", "x-api-key", "Authorization", "progressToken", "bytes"])
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {key: text, "n": 1}}, ensure_ascii=rng.random() < 0.3,
                          separators=rng.choice([(",", ":"), (", ", ": ")]))
        raw = body.encode()
        if rng.random() < 0.05:
            raw = raw[:-3] + b"\xff\xfe" + raw[-3:]          # not UTF-8
        elif rng.random() < 0.03:
            raw = raw[:-3] + "\ud800".encode("utf-8", "surrogatepass") + raw[-3:]   # a surrogate: not UTF-8 either
        elif rng.random() < 0.02:
            raw = b"x" * rng.randint(70_000, 90_000)              # large (and not JSON)
        kind = rng.choice(["request", "request", "response", "error", "notification", None])
        if kind in ("response", "error") and asked and rng.random() < 0.7:
            msg_id = asked.pop(rng.randrange(len(asked)))
        else:
            msg_id = rng.choice([None, rng.randint(-5, 50), rng.randint(0, 1 << 70), "s-" + str(rng.randint(0, 9)),
                                 "q\"\u00e9\x01", True, 2.5, 10**19])
            if kind == "request" and msg_id is not None:
                asked.append(msg_id)
        method = rng.choice([None, "tools/call", "tools/list", "x/" + str(rng.randint(0, 3)), "m\"\u00e9"])
        policy = rng.choice([None, None, None, "filter", "cache", 'p"q'])
        direction = rng.choice([*DIRECTIONS_ALL, "gateway->audit"])
        for batch, tap in zip(batches, taps):
            batch.append((mono, tap.hops[direction], raw, kinds.get(kind), method, msg_id, policy))
    return batches


def test_the_c_escaping_matches_orjson_at_every_alignment() -> None:
    """The C encoder escapes 16 bytes at a time: specials, multi-byte characters and the frame's
    end at every offset of a block escape exactly as orjson escapes the text; bytes that are not
    UTF-8 at any offset stop it (Python's encoder writes those as base64)."""
    import orjson

    if encode.BUILT is None:
        pytest.skip(NO_C_ENCODER)
    tap = Dumper(DumpSettings(path=os.devnull)).tap("s", "echo", "http", era="modern")
    pieces = ["a", "xyz", "\u00e9", "\u20ac", "\U0001f600", '"', "\\", "\n", "\x01", "\x1f", "\x7f", "b", "/"]
    rng = random.Random(16)
    for n in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        raw = text.encode()
        broken = n % 7 == 0 and raw
        if broken:                 # a byte that cannot be UTF-8 at a random offset
            at = rng.randrange(len(raw))
            raw = raw[:at] + b"\xff" + raw[at + 1:]
        record = (1.5, tap.hops[C2G], raw, FRAME.kind, "tools/call", 1, None)
        data, _, stop, _ = encode.BUILT.encode([record], 0, b"2026-11-21T00:00:00", 1.0, None, encode._KIND_ORDER,
                                                 {}, encode._method_json, encode.to_json, encode._tail, False)
        if broken:
            assert (stop, data) == (0, b""), raw
        else:
            assert stop == 1 and data.endswith(b',"frame":' + orjson.dumps(text) + b"}\n"), raw


@pytest.mark.parametrize("patterns", [(), ("sk-[0-9]+",)], ids=["word test in C encoder", "patterns"])
def test_the_c_and_python_encoders_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        patterns: tuple[str, ...]) -> None:
    """The C encoder is an optimisation only: on random chunks (every kind of record it leaves to
    Python among them, frames to mask among them) it writes exactly what the Python encoder
    writes, and leaves the same open requests behind. Without configured patterns the C encoder
    runs the masking word test itself; with them, writer.py tests every frame first."""
    if encode.BUILT is None:
        pytest.skip(NO_C_ENCODER)
    monkeypatch.setattr(encode, "_clock_offset", lambda: 1_700_000_000.25)
    kinds = {"request": FRAME.kind, "notification": decode(b'{"jsonrpc":"2.0","method":"n"}').kind,
             "response": decode(b'{"jsonrpc":"2.0","id":1,"result":{}}').kind,
             "error": decode(b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}').kind}
    dumpers = [Dumper(DumpSettings(path=str(tmp_path / f"{n}.jsonl"), mask_patterns=patterns)) for n in range(2)]
    dumpers[0].native, dumpers[1].native = encode.BUILT, None
    taps = [d.tap("s\u00e9", "echo", "http", era="modern") for d in dumpers]
    rng = random.Random(5)
    mono = 123_456.75
    masked = 0
    for _ in range(300):
        native_batch, python_batch = _random_batch(rng, taps, kinds, mono)
        mono = native_batch[-1][0]
        native, python = dumpers[0]._encode(native_batch), dumpers[1]._encode(python_batch)
        assert native == python
        masked += native.count(b"***")
        assert taps[0].unanswered == taps[1].unanswered and dumpers[0].unanswered == dumpers[1].unanswered
        for line in native.splitlines():
            json.loads(line)
    assert masked > 300          # frames with secrets were among them, masked the same way
    # Times the integer shortcut cannot decide (within an ulp of a half) go Python's way.
    for mono in (0.0000005, 1.0000005, 2.5e-7, 123_456.0000015, 7.0, 1e9 + 0.5e-6):
        assert dumpers[0]._encode([(mono, taps[0].hops[C2G], FRAME.raw, FRAME.kind, None, None, None)]) == \
            dumpers[1]._encode([(mono, taps[1].hops[C2G], FRAME.raw, FRAME.kind, None, None, None)])


# ---- dump show / stats (golden, on a committed recorded dump) ------------------------------------

def test_show_golden() -> None:
    out = dump_cli("show", str(SMALL.relative_to(ROOT)), "--no-color")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (DATA / "dump-small.show.txt").read_text()
    lines = out.stdout.splitlines()
    assert len(lines) == 42 and "\x1b[" not in out.stdout
    assert sum("C ─▶ G" in line for line in lines) == 10 and sum("C ◀─ G" in line for line in lines) == 11


def test_show_filters_and_full() -> None:
    rel = str(SMALL.relative_to(ROOT))
    calls = dump_cli("show", rel, "--method", "tools/*").stdout.splitlines()
    assert len(calls) == 24      # 6 requests (5 calls + 1 list) and their answers, at 4 hops
    errors = dump_cli("show", rel, "--errors").stdout.splitlines()
    assert len(errors) == 4 and all("error" in line for line in errors)
    assert "#6" in errors[0] and "#8" in errors[2]
    mine = dump_cli("show", rel, "--session", "103e", "--server", "echo").stdout.splitlines()
    assert len(mine) == 42
    assert dump_cli("show", rel, "--server", "other").stdout == ""
    full = dump_cli("show", rel, "--full", "--method", "tools/call").stdout
    assert '"api_key":"***"' in full and "sk-live" not in full


def test_show_colours_on_a_terminal_only() -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "wire_gateway", "dump", "show", str(SMALL)],
                                stdout=slave, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "TERM": "xterm"})
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        assert proc.wait(30) == 0
    finally:
        os.close(master)
    assert b"\x1b[36m" in data and b"\x1b[31m" in data      # directions, and errors in red
    no_colour = subprocess.run([sys.executable, "-m", "wire_gateway", "dump", "show", str(SMALL), "--no-color"],
                               capture_output=True, cwd=ROOT, timeout=30)
    assert b"\x1b[" not in no_colour.stdout


def test_stats_golden() -> None:
    out = dump_cli("stats", str(SMALL.relative_to(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout == (DATA / "dump-small.stats.txt").read_text()
    data = json.loads(dump_cli("stats", str(SMALL), "--json").stdout)
    calls = data["methods"]["tools/call"]
    assert (calls["count"], calls["errors"], calls["bytes_in"], calls["bytes_out"]) == (5, 1, 598, 490)
    assert calls["latency_ms"]["n"] == 5 and calls["latency_ms"]["max"] == 0.967
    assert data["methods"]["no/such/method"]["errors"] == 1
    assert data["methods"]["notifications/initialized"] == {"count": 1, "errors": 0, "bytes_in": 57,
                                                            "bytes_out": 0, "latency_ms": None}
    assert data["hops"]["server->gateway"] == {"frames": 11, "bytes": 2716}
    assert data["sessions"] == 1 and data["dropped"] == 0


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50.0, 90.0, 99.0)
    assert percentile([3.0], 99) == 3.0


# ---- dump fixture --------------------------------------------------------------------------------

def test_fixture_from_dump_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "fixtures" / "small.jsonl"
    res = dump_cli("fixture", str(SMALL), "--out", str(out), "--description", "golden session")
    assert res.returncode == 0, res.stderr
    header, entries = read_fixture(out)
    assert (header.name, header.era, header.protocolVersion, header.transport, header.server) == (
        "small", "legacy", "2025-11-25", "stdio", "echo")
    assert header.description == "golden session" and header.recorded.endswith("Z")
    sends = [m for _, d, m in entries if d == "send"]
    recvs = [m for _, d, m in entries if d == "recv"]
    assert len(sends) == 10 and len(recvs) == 11
    assert [m.get("method") for m in sends[:2]] == ["initialize", "notifications/initialized"]
    assert sends[4]["params"]["arguments"]["api_key"] == "***"      # masked stays masked
    assert entries[0][0] == 0.0 and [t for t, _, _ in entries] == sorted(t for t, _, _ in entries)


def test_fixture_refuses_to_guess_a_session(tmp_path: Path) -> None:
    two = tmp_path / "two.jsonl"
    lines = SMALL.read_text().splitlines()
    other = [json.dumps({**json.loads(line), "session": "ffff0000"}) for line in lines]
    two.write_text("\n".join(lines + other) + "\n")
    res = dump_cli("fixture", str(two), "--out", str(tmp_path / "x.jsonl"))
    assert res.returncode == 1 and not (tmp_path / "x.jsonl").exists()
    assert "2 sessions" in res.stderr and "103edd04" in res.stderr and "ffff0000" in res.stderr
    res = dump_cli("fixture", str(two), "--session", "ffff", "--out", str(tmp_path / "x.jsonl"))
    assert res.returncode == 0, res.stderr
    assert len(read_fixture(tmp_path / "x.jsonl")[1]) == 21


def test_read_fixture_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"wire_gateway_fixture": 1, "name": "x", "era": "legacy", "protocolVersion": "v", '
                   '"transport": "stdio", "server": "s", "recorded": "r"}\n{"t": 1, "dir": "send", "msg": {}}\n'
                   '{"t": 0.5, "dir": "recv", "msg": {}}\n')
    with pytest.raises(FixtureError, match=r":3: t=0\.5 goes back in time"):
        read_fixture(bad)


# ---- dump show --follow ------------------------------------------------------------------------------

def test_follow_survives_rotation(tmp_path: Path) -> None:
    live = tmp_path / "live.jsonl"
    lines = SMALL.read_text().splitlines(keepends=True)
    live.write_text("".join(lines[:5]))
    proc = subprocess.Popen([sys.executable, "-m", "wire_gateway", "dump", "show", str(live), "--follow",
                             "--no-color"], stdout=subprocess.PIPE, cwd=ROOT)
    got: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [got.put(line) for line in proc.stdout], daemon=True).start()

    def read(n: int) -> list[bytes]:
        return [got.get(timeout=10) for _ in range(n)]

    expected_file = tmp_path / "expected.jsonl"
    expected_file.write_text("".join(lines[:20]))
    expected = dump_cli("show", str(expected_file), "--no-color").stdout.encode().splitlines(keepends=True)
    try:
        seen = read(5)
        with open(live, "a") as f:
            f.write("".join(lines[5:10]))
        seen += read(5)
        with open(live, "a") as f:          # written just before the rotation: must not be lost
            f.write(lines[10])
        os.replace(live, f"{live}.1")
        live.write_text("".join(lines[11:20]))
        seen += read(10)
        assert seen == expected
        time.sleep(0.5)
        assert got.empty()
    finally:
        proc.kill()
        proc.wait(10)


# ---- the recorded library ----------------------------------------------------------------------------

LIBRARY = ROOT / "fixtures" / "sessions"


@pytest.mark.parametrize("name", ["echo-small", "tools-list", "big-result", "mixed"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_recorded_library(name: str, era: str) -> None:
    header, entries = read_fixture(LIBRARY / f"{name}-{era}.jsonl")
    assert (header.name, header.era, header.server, header.transport) == (f"{name}-{era}", era, "echo", "stdio")
    assert header.protocolVersion == ("2025-11-25" if era == "legacy" else "2026-07-28")
    sends = [m for _, d, m in entries if d == "send"]
    recvs = [m for _, d, m in entries if d == "recv"]
    if era == "legacy":
        assert [m.get("method") for m in sends[:2]] == ["initialize", "notifications/initialized"]
    else:
        assert all(m["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
                   for m in sends if "id" in m)
    answered = {m["id"] for m in recvs if "id" in m}
    asked = [m["id"] for m in sends if "id" in m and "method" in m]
    text = (LIBRARY / f"{name}-{era}.jsonl").read_text()
    assert "fixture server, pid" not in text         # nothing that differs between runs of the server
    if name == "mixed":
        cancelled = [m for m in sends if m.get("method") == "notifications/cancelled"]
        assert len(cancelled) == 1 and set(asked) - answered == {cancelled[0]["params"]["requestId"]}
        assert sum(m.get("method") == "notifications/progress" for m in recvs) == 4
        assert {m["method"] for m in sends if "method" in m} >= {
            "resources/list", "resources/read", "prompts/list", "prompts/get", "tools/list", "tools/call"}
    else:
        assert set(asked) == answered
    if name == "big-result":
        big = [m for m in recvs if "result" in m and len(json.dumps(m)) > 1 << 20]
        assert len(big) == 1 and big[0]["result"]["content"][0]["text"] == "x" * (1 << 20)
    if name == "tools-list":
        assert sum(m.get("method") == "tools/list" for m in sends) == 25
    if name == "echo-small":
        assert sends[-1]["params"]["arguments"]["api_key"] == "***" and "sk-recorded" not in text


@pytest.mark.parametrize("command", ["stdio", "serve"])
def test_unwritable_dump_path_is_a_plain_error(command: str) -> None:
    res = subprocess.run([sys.executable, "-m", "wire_gateway", command, "--dump", "/proc/no-such-dir/d.jsonl"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert "cannot write the dump file /proc/no-such-dir/d.jsonl" in res.stderr and "Traceback" not in res.stderr
