"""Parsing and verifying webhooks posted by instances (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config.model import Secret, WebhooksConfig
from router.errors import BadRequest, RouterError, Unauthorized
from router.proxy.inbound import parse_webhook, session_status

KEYED = WebhooksConfig(inbound_hmac_key=Secret("k3y"))
PLAIN = WebhooksConfig()


def sign(body: bytes, key: str = "k3y") -> dict[str, str]:
    return {"x-webhook-hmac": hmac.new(key.encode(), body, hashlib.sha512).hexdigest(),
            "x-webhook-hmac-algorithm": "sha512"}


def test_waha_event_parsed_and_kept_verbatim() -> None:
    body = json.dumps({"id": "evt_01", "event": "message", "session": "alice",
                       "payload": {"body": "hi"}}).encode()
    ev = parse_webhook(body, sign(body), KEYED)
    assert (ev.id, ev.session, ev.event, ev.body) == ("evt_01", "alice", "message", body)


def test_evolution_instance_is_the_session_and_ids_fall_back() -> None:
    body = b'{"event": "messages.upsert", "instance": "shop-1", "data": {}}'
    ev = parse_webhook(body, {"x-webhook-request-id": "req-9"}, PLAIN)
    assert (ev.session, ev.event, ev.id) == ("shop-1", "messages.upsert", "req-9")
    ev2 = parse_webhook(b"{}", {}, PLAIN)
    assert ev2.id.startswith("rtr_") and ev2.session is None and ev2.event == "unknown"


@pytest.mark.parametrize("headers", [{}, sign(b"other body"), sign(b'{"a":1}', "wrong"),
                                     {**sign(b'{"a":1}'), "x-webhook-hmac-algorithm": "md5"}])
def test_bad_signature_is_401(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized):
        parse_webhook(b'{"a":1}', headers, KEYED)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'"x"', b"{" * 5000, b"\xff\xfe"])
def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_webhook(body, {}, PLAIN)


def test_session_status_learned() -> None:
    body = b'{"event":"session.status","session":"s1","payload":{"status":"WORKING"}}'
    assert session_status(parse_webhook(body, {}, PLAIN)) == "WORKING"
    assert session_status(parse_webhook(b'{"event":"message","session":"s1"}', {}, PLAIN)) is None


@given(st.binary(max_size=300), st.dictionaries(st.sampled_from(
    ["x-webhook-hmac", "x-webhook-request-id", "x-webhook-hmac-algorithm"]), st.text(max_size=50)))
def test_never_raises_anything_but_router_errors(body: bytes, headers: dict[str, str]) -> None:
    for cfg in (KEYED, PLAIN):
        try:
            parse_webhook(body, headers, cfg)
        except RouterError as e:
            assert e.status in (400, 401)
