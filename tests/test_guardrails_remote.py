"""Remote guardrail providers (wire_gateway.guardrails.remote) against a fake service on loopback.

The service (tests/guardrail_service.py) runs as a subprocess speaking both shapes over real
HTTP; markers in the text decide what it answers. The verdicts are tested here: whether an
error blocks or passes is the engine's decision (`on_error`), so both fail modes must give
the same verdict, an error and no violations.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from guardrail_service import Service

from wire_gateway.config.loader import ConfigError
from wire_gateway.guardrails.remote import (
    RemoteSettings,
    RemoteVerdict,
    make_provider,
    parse_remote,
    url_problem,
)
from wire_gateway.telemetry.masking import SECRETS, mask

KEY = "test-key-0123456789"
BLOCK = ("injection_attack", "pii", "toxicity", "keyword_detector")
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("guardrail"), "--api-key", KEY)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """parse_remote registers keys in the process-wide registry: leave it as other tests expect."""
    SECRETS.clear()
    yield
    SECRETS.clear()


def enkrypt(url: str, **kw) -> RemoteSettings:
    return RemoteSettings(**{"provider": "enkrypt", "url": url, "api_key": KEY, "policy": "Test Policy",
                             "block": BLOCK, **kw})


def webhook(url: str, **kw) -> RemoteSettings:
    return RemoteSettings(**{"provider": "webhook", "url": url + "/webhook", "api_key": KEY,
                             "policy": "strict", **kw})


async def check(settings: RemoteSettings, text: str, direction: str = "input") -> RemoteVerdict:
    provider = make_provider(settings)
    try:
        return await provider.check(text, direction=direction, server="files", tool="read")
    finally:
        await provider.aclose()


async def test_enkrypt_violations_and_pass(service):
    provider = make_provider(enkrypt(service.url, headers={"X-Trace": "t-1"}))
    try:
        ok = await provider.check("a harmless sentence", direction="input", server="s", tool="t")
        assert ok == RemoteVerdict()
        before = service.requests()["count"]
        bad = await provider.check("INJECT this, TOXIC that, SECRET-PII and a KEYWORD", direction="output",
                                   server="s", tool=None)
        assert bad == RemoteVerdict(violations=BLOCK)    # 1, a list, 1, and keyword_detected for keyword_detector
        last = service.requests()
        assert last["count"] == before + 1
        assert last["last"]["path"] == "/guardrails/policy/detect"
        assert last["last"]["body"] == {"text": "INJECT this, TOXIC that, SECRET-PII and a KEYWORD"}
        headers = last["last"]["headers"]
        assert (headers["apikey"], headers["x-enkrypt-policy"], headers["x-trace"]) == (KEY, "Test Policy", "t-1")
        assert headers["content-type"] == "application/json"
    finally:
        await provider.aclose()
    # only the detectors of the block list count
    assert await check(enkrypt(service.url, block=("pii",)), "INJECT only") == RemoteVerdict()
    assert await check(enkrypt(service.url + "/", block=("pii",)), "SECRET-PII") == RemoteVerdict(("pii",))


async def test_webhook_shape(service):
    verdict = await check(webhook(service.url), "INJECT and SECRET-PII", direction="output")
    assert verdict == RemoteVerdict(violations=("injection_attack", "pii"))
    last = service.requests()["last"]
    assert last["path"] == "/webhook"
    assert last["body"] == {"text": "INJECT and SECRET-PII", "direction": "output", "server": "files",
                            "tool": "read", "policy": "strict"}
    assert last["headers"]["authorization"] == f"Bearer {KEY}"
    assert await check(webhook(service.url), "nothing to see") == RemoteVerdict()
    assert await check(webhook(service.url, block=("pii",)), "INJECT and SECRET-PII") == RemoteVerdict(("pii",))
    # a lone surrogate (the gateway's parser keeps them) still goes out, escaped
    assert await check(webhook(service.url), "\ud800 INJECT") == RemoteVerdict(("injection_attack",))


def assert_clean(verdict: RemoteVerdict, text: str, *fragments: str) -> None:
    """An error verdict, naming what went wrong, without the key or the text."""
    assert verdict.violations == () and verdict.error is not None
    for fragment in fragments:
        assert fragment in verdict.error, verdict.error
    assert KEY not in verdict.error and text not in verdict.error


async def test_wrong_key(service):
    for settings in (enkrypt(service.url, api_key="wrong-key-000000"), webhook(service.url, api_key="nope-0000")):
        verdict = await check(settings, "SECRET-PII in here")
        assert_clean(verdict, "SECRET-PII in here", "HTTP 401", "answered an error: invalid")
        assert "wrong-key-000000" not in verdict.error


@pytest.mark.parametrize("on_error", ["block", "allow"])
async def test_timeout_in_both_fail_modes(service, on_error):
    for settings in (enkrypt(service.url, timeout=0.3, on_error=on_error),
                     webhook(service.url, timeout=0.3, on_error=on_error)):
        start = trio.current_time()
        verdict = await check(settings, "SLEEP=3 INJECT")
        assert trio.current_time() - start < 1.5
        assert_clean(verdict, "SLEEP=3 INJECT", "did not answer within 0.3s")
        assert settings.on_error == on_error    # the engine's decision, from the same verdict
    # an answer that trickles in: every read is within httpx's timeout, the trio deadline ends it
    start = trio.current_time()
    verdict = await check(webhook(service.url, timeout=0.5, on_error=on_error), "DRIP INJECT")
    assert trio.current_time() - start < 1.5
    assert_clean(verdict, "DRIP INJECT", "did not answer within 0.5s")


async def test_provider_failures(service):
    cases = [("FAIL-500 SECRET-PII", "refused the check (HTTP 500)"),
             ("FAIL-ERROR SECRET-PII", "answered an error: model overloaded, try later (HTTP 200)"),
             ("FAIL-MALFORMED SECRET-PII", "bytes that are not JSON (HTTP 200)"),
             ("FAIL-SHAPE SECRET-PII", "answered an unexpected shape"),
             ("FAIL-HUGE SECRET-PII", "answered more than 1048576 bytes")]
    for make in (enkrypt, webhook):
        for text, phrase in cases:
            assert_clean(await check(make(service.url), text), text, phrase)
    # a service that echoes the text in its error: the quote is withheld
    text = "FAIL-ECHO my card is 4111 1111 1111 1111"
    verdict = await check(enkrypt(service.url), text)
    assert_clean(verdict, text, "(withheld: it quotes the text checked)")
    assert "4111" not in verdict.error


async def test_unreachable_and_missing_policy(service):
    with trio.socket.socket() as sock:      # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    verdict = await check(webhook(f"http://127.0.0.1:{port}"), "INJECT")
    assert_clean(verdict, "INJECT", "is unreachable (ConnectError")
    verdict = await check(enkrypt(service.url, policy=None), "hello")
    assert_clean(verdict, "hello", "HTTP 400", "X-Enkrypt-Policy")


async def test_connections_are_reused(service):
    provider = make_provider(webhook(service.url))
    try:
        ports = set()
        for _ in range(3):
            assert (await provider.check("x", direction="input", server="s", tool="t")).error is None
            ports.add(service.requests()["last"]["client_port"])
        assert len(ports) == 1       # one connection did all three
    finally:
        await provider.aclose()


def test_https_only():
    assert url_problem("https://guard.example/api") is None
    assert url_problem("http://127.0.0.1:9000") is None and url_problem("http://localhost") is None
    assert url_problem("http://[::1]:80/x") is None
    assert "must be https" in url_problem("http://guard.example")
    assert "must be https" in url_problem("http://10.0.0.1")
    assert "not an http(s) URL" in url_problem("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="must be https"):
        make_provider(RemoteSettings(provider="webhook", url="http://guard.example/check"))
    with pytest.raises(ConfigError, match=r"\$\.guardrails\.remote\.url: http://guard\.example/ must be https"):
        parse_remote({"provider": "webhook", "url": "http://guard.example/"})


def test_parse_remote_expands_and_registers_secrets():
    env = {"GUARD_KEY": "k-from-env-123456", "GUARD_TOKEN": "tok-abcdef-98765", "GUARD_HOST": "guard.example"}
    settings = parse_remote({"provider": "enkrypt", "url": "https://${GUARD_HOST}", "api_key": "${GUARD_KEY}",
                             "policy": "P", "block": ["pii", "injection_attack"],
                             "headers": {"X-Org": "Bearer ${GUARD_TOKEN}"}, "timeout": 0.5,
                             "on_error": "allow", "parallel": True}, env)
    assert settings == RemoteSettings(provider="enkrypt", url="https://guard.example", api_key="k-from-env-123456",
                                      policy="P", block=("pii", "injection_attack"),
                                      headers={"X-Org": "Bearer tok-abcdef-98765"}, timeout=0.5,
                                      on_error="allow", parallel=True)
    line = mask("sent apikey k-from-env-123456 and tok-abcdef-98765 to guard.example")
    assert "k-from-env-123456" not in line and "tok-abcdef-98765" not in line and "guard.example" in line
    defaults = parse_remote({"provider": "webhook", "url": "http://127.0.0.1:1/hook"}, {})
    assert (defaults.timeout, defaults.on_error, defaults.parallel, defaults.block) == (2.0, "block", False, ())


def test_parse_remote_refusals():
    with pytest.raises(ConfigError) as err:
        parse_remote({"provider": "enkrypt", "url": "https://guard.example", "timeout": 0}, {})
    assert err.value.problems == [
        "$.guardrails.remote.api_key: the enkrypt provider needs an API key",
        "$.guardrails.remote.policy: the enkrypt provider needs the name of a saved policy",
        "$.guardrails.remote.block: lists no detector, so the provider could never block",
        "$.guardrails.remote.timeout: must be more than 0 seconds"]
    with pytest.raises(ConfigError, match=r"\$\.guardrails\.p\.input\[0\]\.remote\.api_key: references \$\{NOPE\}"):
        parse_remote({"provider": "webhook", "url": "https://h", "api_key": "${NOPE}"}, {},
                     where="$.guardrails.p.input[0].remote")
    with pytest.raises(ConfigError, match="'bad name' is not a detector name"):
        parse_remote({"provider": "webhook", "url": "https://h", "block": ["bad name"]}, {})
