"""The aggregate's state tables (proxy/aggregate/states.py): a member that connected or whose setup
was a gateway bug stays so, a member the server failed is retried, the aggregate's state only grows
until it stops, and the states read as the plain strings /status always showed."""
from __future__ import annotations

import orjson
import pytest

from wire_gateway.proxy.aggregate.states import (
    AGGREGATE_TRANSITIONS,
    MEMBER_TRANSITIONS,
    AggregateState,
    MemberState,
)
from wire_gateway.upstream.states import BadTransition, check_transition


def test_a_member_is_retried_only_when_the_server_failed() -> None:
    assert check_transition(MEMBER_TRANSITIONS, "m", MemberState.UNAVAILABLE,
                            MemberState.UNAVAILABLE) == "unavailable"
    assert MEMBER_TRANSITIONS[MemberState.CONNECTED] == frozenset()
    assert MEMBER_TRANSITIONS[MemberState.BROKEN] == frozenset()
    assert all(MemberState.WAITING not in allowed for allowed in MEMBER_TRANSITIONS.values())
    with pytest.raises(BadTransition, match="from state 'broken' to 'unavailable'"):
        check_transition(MEMBER_TRANSITIONS, "m", MemberState.BROKEN, MemberState.UNAVAILABLE)


def test_the_aggregate_state_only_grows_until_it_stops() -> None:
    stopped = AggregateState.STOPPED
    assert AGGREGATE_TRANSITIONS[stopped] == frozenset()
    assert all(stopped in allowed for state, allowed in AGGREGATE_TRANSITIONS.items() if state != stopped)
    with pytest.raises(BadTransition):
        check_transition(AGGREGATE_TRANSITIONS, "*", AggregateState.RUNNING, AggregateState.DEGRADED)
    assert orjson.loads(orjson.dumps({"state": AggregateState.DEGRADED})) == {"state": "degraded"}
    assert f"{MemberState.CONNECTED}" == "connected"
