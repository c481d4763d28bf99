"""The states of an upstream and the transitions between them, in one table each (as h11's
`_state.py` keeps its own): a reader sees the whole lifecycle at a glance, and a transition the
table does not list is a bug that fails loudly where it happens instead of showing up later as
a wrong /status page or a request refused for no reason.

The states are `StrEnum`s: they compare equal to their names, and /status JSON, logs and
f-strings show the same plain strings as before ("running", "crash_loop", ...).
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class SupervisorState(StrEnum):
    """A supervised server process (`SupervisedServer`)."""

    STARTING = "starting"        # a process is being spawned, or replays the handshake and queue
    RUNNING = "running"          # frames go straight to the process
    RESTARTING = "restarting"    # the process exited; backing off before the next one (frames queue)
    CRASH_LOOP = "crash_loop"    # too many exits in a window: requests fail fast for a cool-down
    STOPPED = "stopped"          # shut down: every request is answered with an error


SUPERVISOR_TRANSITIONS: Mapping[SupervisorState, frozenset[SupervisorState]] = {
    # STARTING -> STARTING: the first process (the server is born starting, then spawns it).
    # STARTING -> RESTARTING / CRASH_LOOP: the spawn failed, or the process died before it was
    # running (during the replayed handshake).
    SupervisorState.STARTING: frozenset({SupervisorState.STARTING, SupervisorState.RUNNING,
                                         SupervisorState.RESTARTING, SupervisorState.CRASH_LOOP,
                                         SupervisorState.STOPPED}),
    SupervisorState.RUNNING: frozenset({SupervisorState.RESTARTING, SupervisorState.CRASH_LOOP,
                                        SupervisorState.STOPPED}),
    SupervisorState.RESTARTING: frozenset({SupervisorState.STARTING, SupervisorState.STOPPED}),
    SupervisorState.CRASH_LOOP: frozenset({SupervisorState.STARTING, SupervisorState.STOPPED}),
    SupervisorState.STOPPED: frozenset(),
}


class RemoteState(StrEnum):
    """A remote server over Streamable HTTP (`HttpUpstream`): no process to restart, but a
    server that can stop answering for a while."""

    STARTING = "starting"        # constructed, not yet run
    RUNNING = "running"          # requests are POSTed
    UNREACHABLE = "unreachable"  # the last request could not reach it; the next one that does clears it
    STOPPED = "stopped"          # shut down


REMOTE_TRANSITIONS: Mapping[RemoteState, frozenset[RemoteState]] = {
    RemoteState.STARTING: frozenset({RemoteState.RUNNING, RemoteState.STOPPED}),
    RemoteState.RUNNING: frozenset({RemoteState.UNREACHABLE, RemoteState.STOPPED}),
    RemoteState.UNREACHABLE: frozenset({RemoteState.RUNNING, RemoteState.STOPPED}),
    RemoteState.STOPPED: frozenset(),
}


class SessionState(StrEnum):
    """The upstream MCP session of a legacy client over Streamable HTTP (`http_session.UpstreamSession`).
    Its id, when it has one, is kept beside the state: a client's new `initialize` may set it
    while a replay is under way."""

    NONE = "none"                # no upstream session: none opened yet, or a server that keeps none
    OPEN = "open"                # requests, the GET stream and DELETE carry its Mcp-Session-Id
    REOPENING = "reopening"      # the upstream ended it (404): the handshake is replayed; legacy requests wait
    LOST = "lost"                # ended and not reopened: legacy requests fail until the client initializes again


SESSION_TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = {
    # -> OPEN / NONE: the client's initialize was answered (with a session id or without one), or
    # a replay succeeded. -> REOPENING / LOST: a 404 for the session, and the handshake can be
    # replayed or cannot. The gateway's shutdown ends an open session (-> NONE). NONE -> REOPENING:
    # a handshake restored from a record (an adopted session) is replayed at the start.
    SessionState.NONE: frozenset({SessionState.NONE, SessionState.OPEN, SessionState.REOPENING}),
    SessionState.OPEN: frozenset({SessionState.NONE, SessionState.OPEN, SessionState.REOPENING, SessionState.LOST}),
    SessionState.REOPENING: frozenset({SessionState.NONE, SessionState.OPEN, SessionState.LOST}),
    # LOST -> REOPENING / LOST: a 404 for an id a client's initialize set while a replay failed
    SessionState.LOST: frozenset({SessionState.NONE, SessionState.OPEN, SessionState.REOPENING, SessionState.LOST}),
}


class BadTransition(AssertionError):
    """A state change the table does not allow: a bug in the upstream's code, not in its input."""


S = TypeVar("S", bound=StrEnum)     # these tables, and the aggregate's (proxy/aggregate/states.py)


def check_transition(table: Mapping[S, frozenset[S]], name: str, old: S, new: S) -> S:
    """Return `new` if the table allows `old -> new`, else raise BadTransition."""
    if new not in table[old]:
        raise BadTransition(f"server {name}: no transition from state '{old}' to '{new}'")
    return new
