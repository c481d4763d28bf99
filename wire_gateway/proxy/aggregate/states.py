"""The states of the aggregate and of each of its members, with their transitions in one table
each, as `upstream/states.py` keeps an upstream's: the lifecycle reads at a glance, and a change
the table does not list fails loudly (`BadTransition`) where it happens instead of showing up
later as a member that is never retried or a wrong /status page.

A member's state is its setup's, not its upstream's: the upstream has its own state (a process
restarting, a remote server unreachable) and replays the handshake by itself, so a member that
connected once stays connected. The aggregate's state is a summary of its members' and only
grows (`running` once every member is connected) until it stops.
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class MemberState(StrEnum):
    """One server inside the aggregate (`members.Member`)."""

    WAITING = "waiting"            # its first setup attempt has not ended (a lazy aggregate has not started it)
    CONNECTED = "connected"        # its era is known and its handshake done: requests are routed to it
    UNAVAILABLE = "unavailable"    # the last attempt failed (the server's fault): retried with backoff
    BROKEN = "broken"              # setting it up raised inside the gateway: a bug, never retried


MEMBER_TRANSITIONS: Mapping[MemberState, frozenset[MemberState]] = {
    MemberState.WAITING: frozenset({MemberState.CONNECTED, MemberState.UNAVAILABLE, MemberState.BROKEN}),
    # UNAVAILABLE -> UNAVAILABLE: a retry that failed too (with its own problem).
    MemberState.UNAVAILABLE: frozenset({MemberState.CONNECTED, MemberState.UNAVAILABLE, MemberState.BROKEN}),
    MemberState.CONNECTED: frozenset(),
    MemberState.BROKEN: frozenset(),
}


class AggregateState(StrEnum):
    """The aggregate as /status shows it (`Aggregate.state`)."""

    STARTING = "starting"          # no member is connected (yet)
    DEGRADED = "degraded"          # some members are connected, not all
    RUNNING = "running"            # every member is connected
    STOPPED = "stopped"            # shut down: every request still pending was answered with an error


AGGREGATE_TRANSITIONS: Mapping[AggregateState, frozenset[AggregateState]] = {
    # STARTING -> STARTING, DEGRADED -> DEGRADED: a member's attempt failed, or one more connected
    # while others are still missing.
    AggregateState.STARTING: frozenset({AggregateState.STARTING, AggregateState.DEGRADED,
                                        AggregateState.RUNNING, AggregateState.STOPPED}),
    AggregateState.DEGRADED: frozenset({AggregateState.DEGRADED, AggregateState.RUNNING,
                                        AggregateState.STOPPED}),
    AggregateState.RUNNING: frozenset({AggregateState.STOPPED}),
    AggregateState.STOPPED: frozenset(),
}
