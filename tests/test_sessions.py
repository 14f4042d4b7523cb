"""Session-id extraction: the WAHA/Evolution/generic forms, user rules, NEEDS_BODY, ids."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from router.config.model import Profile, SessionRule, SessionsConfig
from router.errors import ConfigError, InvalidSessionId
from router.sessions import NEEDS_BODY, SessionExtractor

JSON_CT = {"content-type": "application/json"}
FORM_CT = {"content-type": "application/x-www-form-urlencoded"}
MULTIPART_CT = {"content-type": "multipart/form-data; boundary=xyz"}


def make(profile: Profile = "waha", *rules: SessionRule, **kw: Any) -> SessionExtractor:
    return SessionExtractor(SessionsConfig(rules=tuple(rules), **kw), profile)


def jbody(obj: object) -> bytes:
    return json.dumps(obj).encode()


def run(
    ex: SessionExtractor,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> object:
    """Extract the way the proxy does: a first call without the body, then with it."""
    path, _, query = target.partition("?")
    hdrs = dict(headers or {})
    if body is not None and "content-length" not in hdrs:
        hdrs["content-length"] = str(len(body))
    first = ex.extract(method, path, query, hdrs, None)
    if first is not NEEDS_BODY:
        return first
    assert body is not None, "NEEDS_BODY for a request without a body"
    second = ex.extract(method, path, query, hdrs, body)
    assert second is not NEEDS_BODY
    return second


# -- WAHA --------------------------------------------------------------------------------

WAHA_CASES: list[tuple[str, str, dict[str, str] | None, bytes | None, str | None]] = [
    # sessions API
    ("GET", "/api/sessions", None, None, None),
    ("GET", "/api/sessions/", None, None, None),
    ("GET", "/api/sessions?all=true", None, None, None),
    ("POST", "/api/sessions", JSON_CT, jbody({"name": "s1", "start": True}), "s1"),
    ("POST", "/api/sessions", JSON_CT, jbody({"start": True}), None),
    ("GET", "/api/sessions/s1", None, None, "s1"),
    ("PUT", "/api/sessions/s1", JSON_CT, jbody({"config": {}}), "s1"),
    ("DELETE", "/api/sessions/s1", None, None, "s1"),
    ("GET", "/api/sessions/s1/me", None, None, "s1"),
    ("POST", "/api/sessions/s1/start", None, None, "s1"),
    ("POST", "/api/sessions/s1/stop", None, None, "s1"),
    ("POST", "/api/sessions/s1/restart", None, None, "s1"),
    ("POST", "/api/sessions/s1/logout", None, None, "s1"),
    ("POST", "/api/sessions/s1/start/", None, None, "s1"),
    # deprecated actions: the word after /api/sessions/ is not a session
    ("POST", "/api/sessions/start", JSON_CT, jbody({"name": "s2"}), "s2"),
    ("POST", "/api/sessions/stop", JSON_CT, jbody({"name": "s2", "logout": False}), "s2"),
    ("POST", "/api/sessions/logout", JSON_CT, jbody({"name": "s2"}), "s2"),
    ("POST", "/api/sessions/start/", JSON_CT, jbody({"name": "s2"}), "s2"),
    ("POST", "/api/Sessions/START", JSON_CT, jbody({"name": "s2"}), "s2"),
    ("POST", "/api/sessions/start", JSON_CT, jbody({}), None),
    ("GET", "/api/sessions/start", None, None, "start"),  # a session named "start"
    ("POST", "/api/sessions/start/start", None, None, "start"),
    ("DELETE", "/api/sessions/logout", None, None, "logout"),
    # /api/{session}/<resource>/...
    ("GET", "/api/s1/auth/qr?format=image", None, None, "s1"),
    ("POST", "/api/s1/auth/request-code", JSON_CT, jbody({"phoneNumber": "1"}), "s1"),
    ("GET", "/api/s1/chats", None, None, "s1"),
    ("GET", "/api/s1/chats/", None, None, "s1"),
    ("GET", "/api/s1/chats/123%40c.us/messages?limit=10", None, None, "s1"),
    ("DELETE", "/api/s1/chats/123@c.us/messages/true_123@c.us_AAA", None, None, "s1"),
    ("GET", "/api/s1/groups", None, None, "s1"),
    ("POST", "/api/s1/groups/123@g.us/participants/add", None, None, "s1"),
    ("PUT", "/api/s1/contacts/123@c.us", None, None, "s1"),
    ("GET", "/api/s1/profile", None, None, "s1"),
    ("POST", "/api/s1/presence", None, None, "s1"),
    ("GET", "/api/s1/labels", None, None, "s1"),
    ("GET", "/api/s1/channels", None, None, "s1"),
    ("POST", "/api/s1/status/text", None, None, "s1"),
    ("GET", "/api/s1/lids", None, None, "s1"),
    ("POST", "/api/s1/events", None, None, "s1"),
    ("POST", "/api/s1/calls/reject", None, None, "s1"),
    ("POST", "/api/s1/media/convert/voice", None, None, "s1"),
    ("GET", "/API/s1/chats", None, None, "s1"),
    ("GET", "/api/Big.Name-1@x:y/chats", None, None, "Big.Name-1@x:y"),
    # files
    ("GET", "/api/files/s1/true_123@c.us_AAA.jpg", None, None, "s1"),
    ("GET", "/api/files/s1/sub/file.jpg", None, None, "s1"),
    ("GET", "/api/files/file.jpg", None, None, None),
    # query ?session=
    ("GET", "/api/screenshot?session=s1", None, None, "s1"),
    ("GET", "/api/screenshot", None, None, "default"),
    ("GET", "/api/contacts?contactId=1%40c.us&session=s1", None, None, "s1"),
    ("GET", "/api/contacts/all?session=s1", None, None, "s1"),
    ("GET", "/api/contacts/check-exists?phone=1&session=s1", None, None, "s1"),
    ("GET", "/api/contacts/about?contactId=1&session=s1", None, None, "s1"),
    ("GET", "/api/contacts/profile-picture?session=s1&contactId=1", None, None, "s1"),
    ("POST", "/api/contacts/block", JSON_CT, jbody({"session": "s1", "contactId": "1"}), "s1"),
    ("GET", "/api/messages?chatId=1%40c.us&session=s1&limit=10", None, None, "s1"),
    ("GET", "/api/checkNumberStatus?phone=1&session=s1", None, None, "s1"),
    ("GET", "/api/sendText?phone=1&text=hi&session=s1", None, None, "s1"),
    ("GET", "/api/sendText?phone=1&text=hi", None, None, "default"),
    # JSON body `session` (missing: "default")
    ("POST", "/api/sendText", JSON_CT, jbody({"session": "s1", "chatId": "1", "text": "x"}), "s1"),
    ("POST", "/api/sendText", JSON_CT, jbody({"chatId": "1", "text": "x"}), "default"),
    ("POST", "/api/sendText", None, None, "default"),  # no body at all: WAHA sees {}
    ("POST", "/api/sendText/", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendtext", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendSeen", JSON_CT, jbody({"session": "s1", "chatId": "1"}), "s1"),
    ("POST", "/api/startTyping", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/stopTyping", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("PUT", "/api/reaction", JSON_CT, jbody({"session": "s1", "reaction": "+"}), "s1"),
    ("PUT", "/api/star", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendPoll", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendLocation", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendContactVcard", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/forwardMessage", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendList", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/reply", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/send/link-custom-preview", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/send/buttons/reply", JSON_CT, jbody({"session": "s1"}), "s1"),
    ("POST", "/api/sendImage", JSON_CT, jbody({"session": "s1", "file": {"url": "u"}}), "s1"),
    ("POST", "/api/sendImage?session=s2", JSON_CT, jbody({"session": "s1"}), "s1"),  # body wins
    ("POST", "/api/sendImage?session=s2", JSON_CT, jbody({"chatId": "1"}), "s2"),
    ("POST", "/api/sendFile", JSON_CT, jbody({"chatId": "1"}), "default"),
    # multipart uploads are never buffered: only the query can tell
    ("POST", "/api/sendVideo?session=s1", MULTIPART_CT, None, "s1"),
    ("POST", "/api/sendVoice", MULTIPART_CT, None, None),
    ("POST", "/api/sendText", MULTIPART_CT, None, None),
    # urlencoded bodies are read too (express parses them)
    ("POST", "/api/sendText", FORM_CT, b"chatId=1%40c.us&session=s1&text=a+b", "s1"),
    ("POST", "/api/sendText", FORM_CT, b"chatId=1", "default"),
    # not WAHA routes, or unscoped ones
    ("DELETE", "/api/sendText", None, None, None),
    ("POST", "/api/sendText/extra", JSON_CT, jbody({"session": "s1"}), None),
    ("GET", "/api/server/version", None, None, None),
    ("GET", "/api/server/status", None, None, None),
    ("POST", "/api/server/stop", JSON_CT, jbody({"force": True}), None),
    ("GET", "/api/server/debug/heapsnapshot", None, None, None),
    ("GET", "/api/server/debug/browser/trace/s1?seconds=5", None, None, "s1"),
    ("GET", "/api/version", None, None, None),
    ("GET", "/api/keys", None, None, None),
    ("PUT", "/api/keys/key_1", None, None, None),
    ("POST", "/api/admin/clear-storage", None, None, None),
    ("GET", "/api/unknownThing", None, None, None),
    ("GET", "/ping", None, None, None),
    ("GET", "/health", None, None, None),
    ("GET", "/metrics", None, None, None),
    ("GET", "/", None, None, None),
    ("GET", "", None, None, None),
    ("GET", "/api", None, None, None),
    ("GET", "/api/", None, None, None),
    ("GET", "/dashboard/", None, None, None),
    # apps
    ("GET", "/api/apps?session=s1", None, None, "s1"),
    ("GET", "/api/apps", None, None, None),
    ("POST", "/api/apps", JSON_CT, jbody({"session": "s1", "app": "chatwoot"}), "s1"),
    ("POST", "/api/apps", JSON_CT, jbody({"app": "chatwoot"}), None),
    ("GET", "/api/apps/app_1", None, None, None),
    ("POST", "/api/apps/app_1/purge", None, None, None),
    ("GET", "/api/apps/chatwoot/locales", None, None, None),
    ("POST", "/api/apps/chatwoot/s1/purge", None, None, "s1"),
    ("GET", "/api/apps/phone-numbers/s1/cache/stats", None, None, "s1"),
    ("POST", "/webhooks/chatwoot/s1/app_1", JSON_CT, jbody({"event": "x"}), "s1"),
    # shapes just off the real routes
    ("POST", "/webhooks/chatwoot/s1/app_1/x", None, None, None),
    ("POST", "/api/send/a/b/c", JSON_CT, jbody({"session": "s1"}), None),
    ("GET", "/api/server/debug/browser/trace/s1/x", None, None, None),
    ("GET", "/api/server/debug/browser/s1", None, None, None),
    ("GET", "/api/apps/chatwoot/s1", None, None, None),
    ("GET", "/api/files/s1", None, None, None),
    ("GET", "/api/contacts/a/b?session=s1", None, None, None),
    ("GET", "/api/screenshot/x?session=s1", None, None, None),
    ("GET", "/api/s1", None, None, None),
    # websocket
    ("GET", "/ws?session=s1&events=message", None, None, "s1"),
    ("GET", "/ws?events=message&session=s1", None, None, "s1"),
    ("GET", "/ws?session=*", None, None, None),
    ("GET", "/ws?session=%2A", None, None, None),
    ("GET", "/ws?session=", None, None, None),
    ("GET", "/ws", None, None, None),
    # percent- and form-decoding
    ("GET", "/api/sessions/my%40biz", None, None, "my@biz"),
    ("GET", "/api/my%3Abiz/chats", None, None, "my:biz"),
    ("GET", "/api/files/my%40biz/x.jpg", None, None, "my@biz"),
    ("GET", "/api/screenshot?session=my%40biz", None, None, "my@biz"),
    ("GET", "/api/screenshot?%73ession=s1", None, None, "s1"),
    ("GET", "/api/screenshot?session=s1&session=s2", None, None, "s1"),
    ("GET", "/api/screenshot?xsession=s9&session=s1", None, None, "s1"),
]


@pytest.mark.parametrize(("method", "target", "headers", "body", "expected"), WAHA_CASES)
def test_waha_forms(
    method: str,
    target: str,
    headers: dict[str, str] | None,
    body: bytes | None,
    expected: str | None,
) -> None:
    assert run(make("waha"), method, target, headers, body) == expected


def test_waha_body_endpoints_ask_for_the_body() -> None:
    ex = make("waha")
    hdrs = {**JSON_CT, "content-length": "30"}
    assert ex.extract("POST", "/api/sendText", "", hdrs, None) is NEEDS_BODY
    assert ex.extract("POST", "/api/sessions", "", hdrs, None) is NEEDS_BODY
    chunked = {**JSON_CT, "transfer-encoding": "chunked"}
    assert ex.extract("POST", "/api/sendText", "", chunked, None) is NEEDS_BODY
    # path and query forms never need it
    assert ex.extract("POST", "/api/sessions/s1/start", "", hdrs, None) == "s1"
    assert ex.extract("GET", "/api/screenshot", "session=s1", {}, None) == "s1"


def test_waha_body_too_large_is_not_guessed() -> None:
    ex = make("waha", json_body_limit=100)
    big = {**JSON_CT, "content-length": "5000000"}
    # sendText: unreadable body, so no "default" guess
    assert ex.extract("POST", "/api/sendText", "", big, None) is None
    # media senders fall back to ?session=
    assert ex.extract("POST", "/api/sendImage", "session=s1", big, None) == "s1"
    # a prefix longer than the limit is enough to say "too large"
    body = jbody({"session": "s1", "pad": "x" * 200})
    hdrs = {**JSON_CT, "transfer-encoding": "chunked"}
    assert ex.extract("POST", "/api/sendText", "", hdrs, body[:101]) is None
    # so is b"" when the headers announce a body the proxy could not buffer
    assert ex.extract("POST", "/api/sendText", "", hdrs, b"") is None
    assert ex.extract("POST", "/api/sendImage", "session=s1", hdrs, b"") == "s1"
    # while a really empty body is WAHA's {} and means "default"
    assert ex.extract("POST", "/api/sendText", "", {"content-length": "0"}, b"") == "default"
    assert ex.extract("POST", "/api/sendText", "", {}, b"") == "default"


def test_waha_falls_back_to_the_header() -> None:
    ex = make("waha")
    assert ex.extract("GET", "/api/server/version", "", {"x-session-id": "s9"}, None) == "s9"
    assert (
        ex.extract("POST", "/api/sendVoice", "", {**MULTIPART_CT, "x-session-id": "s9"}, None)
        == "s9"
    )
    # a form that names the session wins over the header
    assert ex.extract("GET", "/api/s1/chats", "", {"x-session-id": "s9"}, None) == "s1"


# -- Evolution ---------------------------------------------------------------------------

EVOLUTION_CASES: list[tuple[str, str, dict[str, str] | None, bytes | None, str | None]] = [
    ("POST", "/message/sendText/inst1", JSON_CT, jbody({"number": "1", "text": "x"}), "inst1"),
    ("POST", "/message/sendMedia/inst1", MULTIPART_CT, None, "inst1"),
    ("POST", "/message/sendWhatsAppAudio/inst1", None, None, "inst1"),
    ("GET", "/instance/connect/inst1", None, None, "inst1"),
    ("GET", "/instance/connectionState/inst1", None, None, "inst1"),
    ("POST", "/instance/restart/inst1", None, None, "inst1"),
    ("POST", "/instance/setPresence/inst1", None, None, "inst1"),
    ("DELETE", "/instance/logout/inst1", None, None, "inst1"),
    ("DELETE", "/instance/delete/inst1", None, None, "inst1"),
    (
        "POST",
        "/instance/create",
        JSON_CT,
        jbody({"instanceName": "inst1", "qrcode": True}),
        "inst1",
    ),
    ("POST", "/instance/create", JSON_CT, jbody({"qrcode": True}), None),
    ("POST", "/instance/create", FORM_CT, b"instanceName=inst1", "inst1"),
    ("GET", "/instance/fetchInstances", None, None, None),
    ("GET", "/instance/fetchInstances?instanceName=inst1", None, None, "inst1"),
    ("POST", "/chat/whatsappNumbers/inst1", None, None, "inst1"),
    ("GET", "/chat/findChats/inst1", None, None, "inst1"),
    ("PUT", "/chat/markMessageAsRead/inst1", None, None, "inst1"),
    ("POST", "/group/create/inst1", None, None, "inst1"),
    ("GET", "/group/participants/inst1?groupJid=1%40g.us", None, None, "inst1"),
    ("GET", "/group/fetchAllGroups/inst1?getParticipants=false", None, None, "inst1"),
    ("POST", "/call/offer/inst1", None, None, "inst1"),
    ("POST", "/business/getCatalog/inst1", None, None, "inst1"),
    ("GET", "/label/findLabels/inst1", None, None, "inst1"),
    ("POST", "/settings/set/inst1", None, None, "inst1"),
    ("GET", "/proxy/find/inst1", None, None, "inst1"),
    ("POST", "/template/create/inst1", None, None, "inst1"),
    ("POST", "/webhook/set/inst1", None, None, "inst1"),
    ("GET", "/webhook/find/inst1", None, None, "inst1"),
    ("POST", "/websocket/set/inst1", None, None, "inst1"),
    ("POST", "/rabbitmq/set/inst1", None, None, "inst1"),
    ("POST", "/chatwoot/set/inst1", None, None, "inst1"),
    ("POST", "/chatwoot/webhook/inst1", None, None, "inst1"),
    ("GET", "/typebot/fetch/bot_1/inst1", None, None, "inst1"),
    ("DELETE", "/openai/deleteCreds/creds_1/inst1", None, None, "inst1"),
    ("POST", "/evolutionBot/create/inst1", None, None, "inst1"),
    ("POST", "/s3/getMedia/inst1", None, None, "inst1"),
    ("POST", "/baileys/onWhatsapp/inst1", None, None, "inst1"),
    ("POST", "/Message/SendText/inst1", None, None, "inst1"),
    ("POST", "/message/sendText/inst1/", None, None, "inst1"),
    ("POST", "/message/sendText/my%40inst", None, None, "my@inst"),
    ("POST", "/message/sendText", None, None, None),
    ("POST", "/webhook/meta", JSON_CT, jbody({"entry": []}), None),
    ("GET", "/webhook/meta?hub.challenge=1", None, None, None),
    ("POST", "/webhook/evolution", JSON_CT, jbody({}), None),
    ("GET", "/", None, None, None),
    ("POST", "/verify-creds", None, None, None),
    ("GET", "/manager/assets/index.js", None, None, None),
    ("GET", "/assets/index.css", None, None, None),
    ("GET", "/evohub/channels/ch_1", None, None, None),
    # WAHA forms mean nothing here
    ("GET", "/api/sessions/s1", None, None, None),
]


@pytest.mark.parametrize(("method", "target", "headers", "body", "expected"), EVOLUTION_CASES)
def test_evolution_forms(
    method: str,
    target: str,
    headers: dict[str, str] | None,
    body: bytes | None,
    expected: str | None,
) -> None:
    assert run(make("evolution"), method, target, headers, body) == expected


def test_evolution_create_asks_for_the_body() -> None:
    ex = make("evolution")
    hdrs = {**JSON_CT, "content-length": "40"}
    assert ex.extract("POST", "/instance/create", "", hdrs, None) is NEEDS_BODY
    assert ex.extract("GET", "/instance/fetchInstances", "", {"x-session-id": "i9"}, None) == "i9"


# -- generic -----------------------------------------------------------------------------


def test_generic_uses_the_header_only() -> None:
    ex = make("generic")
    assert ex.extract("POST", "/anything", "", {"x-session-id": "s1"}, None) == "s1"
    assert ex.extract("POST", "/api/sessions/s1", "session=s2", {}, None) is None
    assert ex.extract("GET", "/ws", "session=s2", {}, None) is None


# -- user rules --------------------------------------------------------------------------

ACCOUNTS = SessionRule(path=re.compile(r"^/v1/accounts/(?P<session>[^/]+)/"))
HEADER = SessionRule(header="x-account")
QUERY = SessionRule(query="account")
MESSAGES = SessionRule(
    methods=frozenset({"POST"}), path=re.compile(r"^/v1/messages$"), json="account"
)


def test_user_rules_each_kind() -> None:
    ex = make("generic", ACCOUNTS, HEADER, QUERY, MESSAGES)
    assert ex.extract("GET", "/v1/accounts/acc%401/chats", "", {}, None) == "acc@1"
    assert ex.extract("GET", "/v1/other", "", {"x-account": "a2"}, None) == "a2"
    assert ex.extract("GET", "/v1/other", "x=1&account=a3", {}, None) == "a3"
    assert run(ex, "POST", "/v1/messages", JSON_CT, jbody({"account": "a4"})) == "a4"
    assert ex.extract("GET", "/v1/other", "", {}, None) is None


def test_user_rules_order() -> None:
    hdrs = {"x-account": "from-header"}
    path = "/v1/accounts/from-path/x"
    assert make("generic", ACCOUNTS, HEADER).extract("GET", path, "", hdrs, None) == "from-path"
    assert make("generic", HEADER, ACCOUNTS).extract("GET", path, "", hdrs, None) == "from-header"
    # a JSON rule first: its answer is needed before the header rule may speak
    both = {**hdrs, **JSON_CT, "content-length": "20"}
    first_json = make("generic", MESSAGES, HEADER)
    assert first_json.extract("POST", "/v1/messages", "", both, None) is NEEDS_BODY
    assert first_json.extract("POST", "/v1/messages", "", both, jbody({"x": 1})) == "from-header"
    assert make("generic", HEADER, MESSAGES).extract("POST", "/v1/messages", "", both, None) == (
        "from-header"
    )


def test_user_rules_come_before_the_profile() -> None:
    ex = make("waha", HEADER)
    assert ex.extract("GET", "/api/s1/chats", "", {"x-account": "mine"}, None) == "mine"
    assert ex.extract("GET", "/api/s1/chats", "", {}, None) == "s1"
    # X-Session-Id stays the last resort, after the user's rules
    assert ex.extract("GET", "/x", "", {"x-account": "a", "x-session-id": "b"}, None) == "a"


def test_user_rule_filters() -> None:
    ex = make("generic", MESSAGES)
    hdrs = {**JSON_CT, "content-length": "20"}
    # wrong method or path: the rule does not apply, so the body is not needed
    assert ex.extract("PUT", "/v1/messages", "", hdrs, None) is None
    assert ex.extract("POST", "/v1/messages/1", "", hdrs, None) is None
    only_get = SessionRule(methods=frozenset({"GET"}), header="x-account")
    assert make("generic", only_get).extract("POST", "/", "", {"x-account": "a"}, None) is None
    assert make("generic", only_get).extract("GET", "/", "", {"x-account": "a"}, None) == "a"
    filtered_query = SessionRule(path=re.compile(r"^/v2/"), query="account")
    ex2 = make("generic", filtered_query)
    assert ex2.extract("GET", "/v2/x", "account=a", {}, None) == "a"
    assert ex2.extract("GET", "/v1/x", "account=a", {}, None) is None


def test_user_path_rule_without_the_group_match() -> None:
    optional = SessionRule(path=re.compile(r"^/v1/(?:accounts/(?P<session>[^/]+))?"))
    ex = make("generic", optional)
    assert ex.extract("GET", "/v1/other", "", {}, None) is None
    assert ex.extract("GET", "/v1/accounts/a1", "", {}, None) == "a1"


def test_user_json_rule_dotted_field() -> None:
    ex = make("generic", SessionRule(json="data.session"))
    assert run(ex, "POST", "/", JSON_CT, jbody({"data": {"session": "s1"}})) == "s1"
    assert run(ex, "POST", "/", JSON_CT, jbody({"data": "s1"})) is None
    assert run(ex, "POST", "/", JSON_CT, jbody({"session": "s1"})) is None
    with pytest.raises(InvalidSessionId, match=r"data\.session"):
        run(ex, "POST", "/", JSON_CT, jbody({"data": {"session": 7}}))


def test_bad_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="session"):
        make("generic", SessionRule(path=re.compile(r"^/v1/(?P<account>[^/]+)")))
    with pytest.raises(ConfigError):
        make("generic", SessionRule(methods=frozenset({"GET"})))
    with pytest.raises(ConfigError):
        make("generic", SessionRule(header="a", query="b"))
    with pytest.raises(ConfigError):
        make("generic", SessionRule(json="data..session"))


# -- NEEDS_BODY protocol and body safety -------------------------------------------------

JSON_RULE = SessionRule(json="account")


def test_needs_body_only_when_a_body_can_exist() -> None:
    ex = make("generic", JSON_RULE)
    assert ex.extract("POST", "/", "", {"content-length": "12"}, None) is NEEDS_BODY
    assert ex.extract("POST", "/", "", {"transfer-encoding": "chunked"}, None) is NEEDS_BODY
    assert ex.extract("POST", "/", "", {}, None) is None  # no framing: no body
    assert ex.extract("POST", "/", "", {"content-length": "0"}, None) is None
    assert ex.extract("POST", "/", "", {"content-length": "junk"}, None) is None
    assert ex.extract("POST", "/", "", {**MULTIPART_CT, "content-length": "9"}, None) is None
    assert ex.extract("POST", "/", "", {**FORM_CT, "content-length": "9"}, None) is None


def test_body_over_the_limit_is_skipped() -> None:
    ex = make("generic", JSON_RULE, json_body_limit=64)
    body = jbody({"account": "a1", "pad": "x" * 100})
    hdrs = {"content-length": str(len(body))}
    assert ex.extract("POST", "/", "", hdrs, None) is None  # Content-Length says too large
    assert ex.extract("POST", "/", "", {"transfer-encoding": "chunked"}, body) is None
    small = jbody({"account": "a1"})
    assert run(ex, "POST", "/", None, small) == "a1"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"[1, 2]",
        b'"account"',
        b"42",
        b"null",
        b"\xff\xfe\x00garbage",
        b'{"account": "a1"',
        b"[" * 100_000,
        b'{"a":' * 100_000,
        b'{"n": ' + b"1" * 5000 + b', "account": "a1"}',
    ],
)
def test_malformed_json_yields_nothing(body: bytes) -> None:
    ex = make("generic", JSON_RULE, json_body_limit=1 << 20)
    assert ex.extract("POST", "/", "", {"content-length": str(len(body))}, body) is None


@pytest.mark.parametrize("value", [7, 1.5, None, True, [], ["a1"], {"id": "a1"}])
def test_json_field_that_is_not_a_string(value: object) -> None:
    ex = make("generic", JSON_RULE)
    with pytest.raises(InvalidSessionId, match="must be a string"):
        run(ex, "POST", "/", JSON_CT, jbody({"account": value}))


def test_json_body_in_other_encodings() -> None:
    ex = make("generic", JSON_RULE)
    assert run(ex, "POST", "/", JSON_CT, '{"account": "a1"}'.encode("utf-16")) == "a1"
    assert run(ex, "POST", "/", JSON_CT, b'\xef\xbb\xbf{"account": "a1"}') == "a1"


def test_body_parsed_once_for_several_rules() -> None:
    ex = make("waha", SessionRule(json="account"), SessionRule(json="tenant.session"))
    body = jbody({"session": "s1"})
    assert run(ex, "POST", "/api/sendText", JSON_CT, body) == "s1"
    body2 = jbody({"tenant": {"session": "t1"}, "session": "s1"})
    assert run(ex, "POST", "/api/sendText", JSON_CT, body2) == "t1"


# -- invalid ids -------------------------------------------------------------------------

BAD_PATH_IDS = [
    "..",
    ".",
    "%2e%2e",
    "a%2Fb",
    "%2e%2e%2f",
    "%00",
    "a%20b",
    "x" * 200,
    "s%C3%A9",
    "é",
]


@pytest.mark.parametrize("raw", BAD_PATH_IDS)
def test_invalid_ids_in_the_path(raw: str) -> None:
    with pytest.raises(InvalidSessionId):
        make("waha").extract("GET", f"/api/sessions/{raw}", "", {}, None)
    with pytest.raises(InvalidSessionId):
        make("waha").extract("GET", f"/api/{raw}/chats", "", {}, None)
    with pytest.raises(InvalidSessionId):
        make("evolution").extract("POST", f"/message/sendText/{raw}", "", {}, None)


@pytest.mark.parametrize(
    "raw", ["..", "..%2F", "a+b", "%00", "", "x" * 200, "%C3%A9", "a%0A", "*x"]
)
def test_invalid_ids_in_the_query(raw: str) -> None:
    with pytest.raises(InvalidSessionId, match="query"):
        make("waha").extract("GET", "/api/screenshot", f"session={raw}", {}, None)


@pytest.mark.parametrize("value", ["..", "a/b", "", "a b", "abc\n", "x" * 129, "sé"])
def test_invalid_ids_in_headers_and_bodies(value: str) -> None:
    with pytest.raises(InvalidSessionId, match="X-Session-Id"):
        make("generic").extract("GET", "/", "", {"x-session-id": value}, None)
    with pytest.raises(InvalidSessionId, match="body field 'session'"):
        run(make("waha"), "POST", "/api/sendText", JSON_CT, jbody({"session": value}))


def test_error_messages_stay_short() -> None:
    huge = "%2F" * 5000
    with pytest.raises(InvalidSessionId) as err:
        make("waha").extract("GET", f"/api/sessions/{huge}", "", {}, None)
    assert len(err.value.message) < 120
    assert "path" in err.value.message
    assert err.value.status == 400 and err.value.code == "invalid_session_id"
    with pytest.raises(InvalidSessionId) as err:
        make("generic").extract("GET", "/", "", {"x-session-id": "\x00" * 100}, None)
    assert len(err.value.message) < 120


def test_custom_id_pattern() -> None:
    ex = make("waha", id_pattern=re.compile(r"[a-z]{1,8}"))
    assert ex.extract("GET", "/api/sessions/abc", "", {}, None) == "abc"
    with pytest.raises(InvalidSessionId):
        ex.extract("GET", "/api/sessions/ABC", "", {}, None)
    with pytest.raises(InvalidSessionId):
        ex.extract("GET", "/api/sessions/abcdefghi", "", {}, None)
    # a pattern that refuses "default" makes WAHA's implicit default unscoped
    strict = make("waha", id_pattern=re.compile(r"s[0-9]+"))
    assert strict.extract("GET", "/api/screenshot", "", {}, None) is None
    assert run(strict, "POST", "/api/sendText", JSON_CT, jbody({"chatId": "1"})) is None
    assert run(strict, "POST", "/api/sendText", JSON_CT, jbody({"session": "s1"})) == "s1"


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="profile"):
        SessionExtractor(SessionsConfig(), "nope")  # type: ignore[arg-type]


def test_body_limit_is_exposed() -> None:
    assert make("waha", json_body_limit=123).body_limit == 123
