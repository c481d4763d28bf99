"""Sans-IO pieces of the upstream layer: backoff pacing, crash-loop detection, handshake replay,
the state tables, the books that owe each request one answer (`Answers`)."""
import json
import logging
import random

import orjson
import pytest

from wire_gateway.config import RestartPolicy
from wire_gateway.proxy.batch import BatchCollector
from wire_gateway.telemetry.masking import Masker
from wire_gateway.upstream.answers import Answers
from wire_gateway.upstream.backoff import Backoff
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import NEVER, as_asked
from wire_gateway.upstream.states import (
    REMOTE_TRANSITIONS,
    SESSION_TRANSITIONS,
    SUPERVISOR_TRANSITIONS,
    BadTransition,
    RemoteState,
    SessionState,
    SupervisorState,
    check_transition,
)
from wire_gateway.wire.frame import decode


def test_backoff_grows_with_jitter_and_is_capped():
    b = Backoff(RestartPolicy(initial_delay=0.1, multiplier=2, max_delay=1.0, jitter=0.2,
                              crash_loop_exits=100), random.Random(1))
    delays = [b.on_exit(now=i * 100.0, lived=0.0).delay for i in range(8)]
    for got, base in zip(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]):
        assert base * 0.8 <= got <= base * 1.2


def test_long_lived_process_resets_the_backoff():
    b = Backoff(RestartPolicy(initial_delay=0.1, jitter=0, reset_after=10, crash_loop_exits=100))
    for i in range(4):
        b.on_exit(now=i * 100.0, lived=0.0)
    assert b.on_exit(now=1000.0, lived=60.0).delay == 0.1


def test_crash_loop_is_detected_in_the_window_and_cools_down():
    b = Backoff(RestartPolicy(crash_loop_exits=3, crash_loop_window=10, crash_loop_cooldown=42))
    assert not b.on_exit(0.0, 0.0).crash_loop
    assert not b.on_exit(1.0, 0.0).crash_loop
    decision = b.on_exit(2.0, 0.0)
    assert decision.crash_loop and decision.delay == 42
    # exits spread wider than the window are not a loop
    b2 = Backoff(RestartPolicy(crash_loop_exits=3, crash_loop_window=10))
    assert not any(b2.on_exit(t, 0.0).crash_loop for t in (0.0, 11.0, 22.0, 33.0))


def test_handshake_replays_only_a_successful_initialize_under_the_gateway_id():
    h = Handshake()
    init = decode(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}')
    h.on_client_request(init)
    assert not h.needs_replay
    h.on_server_reply(decode(b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}'))
    assert not h.needs_replay
    h.on_client_request(init)
    h.on_server_reply(decode(b'{"jsonrpc":"2.0","id":1,"result":{}}'))
    h.on_client_notification(decode(b'{"jsonrpc":"2.0","method":"notifications/initialized"}'))
    assert h.needs_replay
    request, initialized = h.replay("gw-1")
    assert json.loads(request) == {"jsonrpc": "2.0", "id": "gw-1", "method": "initialize",
                                   "params": {"protocolVersion": "2025-11-25"}}
    assert initialized == b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def test_batch_collector_answers_once_everything_arrived():
    c = BatchCollector()
    assert c.open([], []) is None                  # notifications only: no answer
    assert c.open([], [b"E"]) == b"[E]"            # only immediate errors
    assert c.open([1, 2], [b"E"]) is None
    assert c.owns(1) and c.owns(2)
    assert c.deliver(2, b"B") is None
    assert c.deliver(1, b"A") == b"[E,B,A]"
    assert not c


def test_masking_never_leaves_a_full_secret():
    m = Masker([r"corp-[0-9]{6}"])
    text = m('Authorization: Bearer sk-test-1234567890abcdef {"api_key": "k-123", "password":"p"} '
             'GITHUB_TOKEN=ghp_abcdef id corp-123456')
    for secret in ("1234567890abcdef", "k-123", '"p"', "ghp_abcdef", "corp-123456"):
        assert secret not in text
    assert "Bearer sk-t***" in text


def test_era_detection():
    from wire_gateway.wire.era import LEGACY, MODERN, era_of_request

    def era(raw):
        frame = decode(raw)
        return era_of_request(frame.method, frame.msg)

    assert era(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}') == LEGACY
    assert era(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":'
               b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}') == MODERN
    assert era(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') is None
    assert era(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"progressToken":1}}}') is None


def test_state_tables_allow_only_the_lifecycle_and_show_plain_strings():
    """A transition the table does not list raises (a bug, not a state); every state can stop, and
    nothing leaves stopped. The states read as the plain strings /status and logs always showed."""
    assert check_transition(SUPERVISOR_TRANSITIONS, "x", SupervisorState.RESTARTING,
                            SupervisorState.STARTING) == "starting"
    with pytest.raises(BadTransition, match="from state 'crash_loop' to 'running'"):
        check_transition(SUPERVISOR_TRANSITIONS, "x", SupervisorState.CRASH_LOOP, SupervisorState.RUNNING)
    with pytest.raises(BadTransition):
        check_transition(REMOTE_TRANSITIONS, "x", RemoteState.STARTING, RemoteState.UNREACHABLE)
    for table in (SUPERVISOR_TRANSITIONS, REMOTE_TRANSITIONS):
        stopped = next(state for state in table if state == "stopped")
        assert table[stopped] == frozenset()
        assert all(stopped in allowed for state, allowed in table.items() if state != stopped)
    assert orjson.loads(orjson.dumps({"state": SupervisorState.CRASH_LOOP})) == {"state": "crash_loop"}
    assert json.dumps(RemoteState.UNREACHABLE) == '"unreachable"' and f"{SupervisorState.RUNNING}" == "running"


def test_session_states_leave_lost_only_by_a_new_session_or_a_404() -> None:
    """A lost legacy session is left by the client's initialize (open or none) or a replay (after a
    404 for an id such an initialize set); a replay under way is never restarted."""
    assert check_transition(SESSION_TRANSITIONS, "x", SessionState.OPEN, SessionState.REOPENING) == "reopening"
    with pytest.raises(BadTransition):
        check_transition(SESSION_TRANSITIONS, "x", SessionState.NONE, SessionState.LOST)
    with pytest.raises(BadTransition):
        check_transition(SESSION_TRANSITIONS, "x", SessionState.REOPENING, SessionState.REOPENING)
    assert SESSION_TRANSITIONS[SessionState.LOST] >= {SessionState.OPEN, SessionState.NONE}


class _Sink:
    def __init__(self) -> None:
        self.replies: list[tuple[object, dict]] = []

    def server_frame(self, frame: object) -> None:
        raise AssertionError("the books never deliver a server frame")

    def gateway_reply(self, req_id: object, data: bytes) -> None:
        self.replies.append((req_id, json.loads(data)))

    def flush(self) -> None:
        """Nothing buffered."""

    async def wait_writable(self) -> None:
        """Never full."""


def _answers(timeout: float | None = None) -> tuple[Answers, _Sink, Handshake]:
    sink, handshake = _Sink(), Handshake()
    return Answers("srv", sink, handshake, lambda method: {"server": "srv", "method": method},
                   logging.getLogger("test"), timeout), sink, handshake


def test_answers_owe_each_request_one_answer() -> None:
    """The server's answer settles a request once (with the id as the client wrote it, and the
    handshake told); a gateway error goes only to a request still owed one; cancelling owes nothing."""
    books, sink, handshake = _answers()
    init = decode(b'{"jsonrpc":"2.0","id":-0,"method":"initialize","params":{}}')
    handshake.on_client_request(init)
    books.owe(init, 1)
    answer = decode(b'{"jsonrpc":"2.0","id":0,"result":{}}')
    entry = books.settle(answer)
    assert entry is not None and entry.method == "initialize" and handshake.completed
    assert as_asked(answer, entry).raw.startswith(b'{"jsonrpc":"2.0","id":-0,')
    assert books.settle(answer) is None and not books.fail_one(0, -31002, "late")

    books.owe(decode(b'{"jsonrpc":"2.0","id":2,"method":"tools/call"}'), 1)
    books.owe(decode(b'{"jsonrpc":"2.0","id":3,"method":"ping"}'), None)
    books.owe(decode(b'{"jsonrpc":"2.0","id":4,"method":"tools/list"}'), None)
    assert books.cancel(decode(b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}}')) == 4
    assert books.fail_one(2, -31002, "gone before {method}") and not books.fail_one(2, -31002, "twice")
    books.fail_all(-31001, "stopped: {method}")
    assert [(req_id, msg["id"], msg["error"]["code"], msg["error"]["message"], msg["error"]["data"]["method"])
            for req_id, msg in sink.replies] == [(2, 2, -31002, "gone before tools/call", "tools/call"),
                                                 (3, 3, -31001, "stopped: ping", "ping")]
    assert len(books) == 0


def test_answers_time_requests_out_and_progress_moves_the_deadline() -> None:
    books, sink, _ = _answers(timeout=5.0)
    books.owe(decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"}}}'), 1)
    books.owe(decode(b'{"jsonrpc":"2.0","id":2,"method":"subscriptions/listen"}'), 1)
    first = books.next_deadline()
    assert first is not None and first != NEVER
    books.progress(decode(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t"}}'))
    moved = books.next_deadline()
    assert moved is not None and moved >= first
    expired = books.expire(moved + 1)
    assert [req_id for req_id, _ in expired] == [1]          # the subscription never times out
    books.timed_out(1, expired[0][1], "the gateway cancelled it", moved + 1)
    assert sink.replies[0][1]["error"]["data"]["timeout"] == 5.0
    assert 2 in books
