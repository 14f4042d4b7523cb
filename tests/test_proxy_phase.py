"""The exchange's phase: one state and its legal transitions (pure: ``router.proxy.phase``).

Rows are event sequences the data path goes through, h11-style: each must be legal step by
step and end where the row says; other rows are transitions that must be refused.
"""

from __future__ import annotations

import pytest

from router.proxy.phase import FINAL, TRANSITIONS, Phase, PhaseError, advance

pytestmark = pytest.mark.unit

P = Phase

# (what happens, the phases in order)
PATHS: list[tuple[str, list[Phase]]] = [
    ("known session, warm pooled connection", [P.ROUTING, P.SENT, P.STREAMING, P.DONE]),
    ("new session: held, placed, connected",
     [P.ROUTING, P.HOLDING, P.CONNECTING, P.SENT, P.STREAMING, P.DONE]),
    ("session in the JSON body", [P.ROUTING, P.WAIT_BODY, P.SENT, P.STREAMING, P.DONE]),
    ("session in the body, instance down", [P.ROUTING, P.WAIT_BODY, P.HOLDING, P.SENT,
                                            P.STREAMING, P.DONE]),
    ("connect refused, resent after failover",
     [P.ROUTING, P.CONNECTING, P.BACKOFF, P.HOLDING, P.CONNECTING, P.SENT, P.STREAMING, P.DONE]),
    ("instance died with an idempotent request: resent",
     [P.ROUTING, P.SENT, P.BACKOFF, P.HOLDING, P.SENT, P.STREAMING, P.DONE]),
    ("keep-alive race: a fresh connection", [P.ROUTING, P.SENT, P.CONNECTING, P.SENT,
                                             P.STREAMING, P.DONE]),
    ("instance died with a POST: 502", [P.ROUTING, P.SENT, P.DONE]),
    ("upstream timeout before the head: 504", [P.ROUTING, P.SENT, P.DONE]),
    ("hold timeout: 503 session_moving", [P.ROUTING, P.HOLDING, P.DONE]),
    ("webhook stored", [P.ROUTING, P.WEBHOOK, P.STORING, P.DONE]),
    ("webhook refused by the relay", [P.ROUTING, P.WEBHOOK, P.STORING, P.DONE]),
    ("local endpoint (/healthz) or a bad request", [P.ROUTING, P.DONE]),
    ("body too large while queued", [P.DONE]),
    ("fan-out", [P.ROUTING, P.FAN_OUT, P.DONE]),
    ("WebSocket", [P.ROUTING, P.SENT, P.STREAMING, P.TUNNEL]),
    ("response cut by the instance", [P.ROUTING, P.SENT, P.STREAMING, P.ABORTED]),
    ("client gone while queued", [P.ABORTED]),
    ("client gone while held", [P.ROUTING, P.HOLDING, P.ABORTED]),
    ("client gone while the webhook is stored", [P.ROUTING, P.WEBHOOK, P.STORING, P.ABORTED]),
]


@pytest.mark.parametrize("phases", [p for _, p in PATHS], ids=[n for n, _ in PATHS])
def test_paths_are_legal(phases: list[Phase]) -> None:
    phase = P.QUEUED
    for new in phases:
        phase = advance(phase, new)
    assert phase is phases[-1]


# (from, to, why it must never happen)
ILLEGAL: list[tuple[Phase, Phase, str]] = [
    (P.QUEUED, P.SENT, "a request is routed on its turn, not before"),
    (P.STREAMING, P.BACKOFF, "never send again once bytes went to the client"),
    (P.STREAMING, P.CONNECTING, "never send again once bytes went to the client"),
    (P.STREAMING, P.SENT, "never send again once bytes went to the client"),
    (P.SENT, P.ROUTING, "routing happens once"),
    (P.SENT, P.TUNNEL, "a tunnel follows a 101 head"),
    (P.STORING, P.SENT, "a webhook is answered by the router, never forwarded"),
    (P.WEBHOOK, P.SENT, "a webhook is answered by the router, never forwarded"),
    (P.FAN_OUT, P.SENT, "fan-out answers itself"),
    (P.HOLDING, P.STREAMING, "a response needs a request sent"),
    (P.DONE, P.ABORTED, "final"),
    (P.DONE, P.DONE, "answered once"),
    (P.ABORTED, P.DONE, "final"),
    (P.TUNNEL, P.DONE, "final"),
]


@pytest.mark.parametrize(("old", "new", "why"), ILLEGAL,
                         ids=[f"{o.name}->{n.name}" for o, n, _ in ILLEGAL])
def test_illegal_transitions_are_refused(old: Phase, new: Phase, why: str) -> None:
    assert new not in TRANSITIONS[old], why
    with pytest.raises(PhaseError, match=f"{old.name} -> {new.name}"):
        advance(old, new)


def test_the_machine_is_whole() -> None:
    reachable = {P.QUEUED}
    frontier = [P.QUEUED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(Phase)
    for phase in Phase:
        if phase & FINAL:
            assert TRANSITIONS[phase] == frozenset(), phase
        else:  # the client can always go away
            assert P.ABORTED in TRANSITIONS[phase], phase
        # The router answers itself only until the response begins.
        assert (P.DONE in TRANSITIONS[phase]) == (phase <= P.STREAMING), phase
    # Ordered: every phase from STREAMING on means the response began.
    assert [p for p in Phase if p >= P.STREAMING] == [P.STREAMING, P.DONE, P.TUNNEL, P.ABORTED]
