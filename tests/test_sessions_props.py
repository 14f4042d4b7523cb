"""Property tests: extraction never fails with anything but InvalidSessionId, and every
id it returns is valid."""

from __future__ import annotations

import json
import re
import string
from typing import get_args
from urllib.parse import quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from router.config.model import Profile, SessionRule, SessionsConfig
from router.errors import InvalidSessionId
from router.sessions import NEEDS_BODY, SessionExtractor

PATTERN = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
RULES = (
    SessionRule(path=re.compile(r"^/v1/accounts/(?P<session>[^/]+)")),
    SessionRule(methods=frozenset({"POST"}), json="data.session"),
    SessionRule(query="account"),
    SessionRule(header="x-account"),
)
EXTRACTORS = [
    SessionExtractor(SessionsConfig(rules=rules, json_body_limit=4096), profile)
    for profile in get_args(Profile)
    for rules in ((), RULES)
]

# Words that steer the profiles into their deeper branches, mixed with arbitrary text.
WORDS = [
    "api", "sessions", "start", "stop", "logout", "files", "apps", "server", "debug",
    "browser", "trace", "send", "sendText", "sendImage", "contacts", "screenshot", "chats",
    "ws", "webhooks", "chatwoot", "instance", "create", "fetchInstances", "message",
    "v1", "accounts", "s1", "..", ".", "", "%2e%2e", "%2F", "%", "%zz", "%C3%A9", "*",
]  # fmt: skip
segment = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
paths = st.one_of(
    st.lists(segment, max_size=9).map(lambda segs: "/" + "/".join(segs)),
    st.text(max_size=40),
)
query_part = st.tuples(
    st.sampled_from(["session", "instanceName", "account", "x", "%73ession", "session+"]),
    st.one_of(st.sampled_from(["s1", "*", "", "..", "%2A", "a+b", "%ff"]), st.text(max_size=10)),
)
queries = st.one_of(
    st.lists(query_part, max_size=4).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv)),
    st.text(max_size=30),
)
header_values = st.one_of(
    st.sampled_from(["s1", "", "application/json", "multipart/form-data", "0", "12", "-1",
                     "application/x-www-form-urlencoded", "chunked", "99999999999"]),
    st.text(max_size=20),
)  # fmt: skip
headers = st.dictionaries(
    st.sampled_from(["content-type", "content-length", "transfer-encoding", "x-session-id",
                     "x-account"]),
    header_values,
)  # fmt: skip
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["session", "name", "instanceName", "data", "x"]), inner,
                        max_size=3),
    ),
    max_leaves=10,
)  # fmt: skip
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 5000, b'{"session":' * 3000, b"\xff\xfe", b"session=s1&name=x"]),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])


def check_result(result: object, body: bytes | None) -> None:
    if result is None or result is NEEDS_BODY:
        assert not (result is NEEDS_BODY and body is not None), "NEEDS_BODY despite a body"
        return
    assert isinstance(result, str)
    assert PATTERN.fullmatch(result) and result not in {".", ".."}, result


@settings(max_examples=1500, deadline=None)
@given(
    ex=st.sampled_from(EXTRACTORS),
    method=methods,
    path=paths,
    query=queries,
    hdrs=headers,
    body=bodies,
)
def test_extract_only_raises_invalid_session_id(
    ex: SessionExtractor,
    method: str,
    path: str,
    query: str,
    hdrs: dict[str, str],
    body: bytes | None,
) -> None:
    try:
        result = ex.extract(method, path, query, hdrs, body)
    except InvalidSessionId as err:
        assert len(err.message) < 200
        return
    check_result(result, body)


ids = st.text(alphabet=string.ascii_letters + string.digits + "_.@:-", min_size=1, max_size=128)
ids = ids.filter(lambda s: s not in {".", ".."})
RESERVED_LOWER = {
    "sendtext", "sendbuttons", "sendlist", "sendpoll", "sendpollvote", "sendlocation",
    "sendcontactvcard", "sendlinkpreview", "sendseen", "sendtextbuttons", "forwardmessage",
    "starttyping", "stoptyping", "reaction", "star", "reply", "sendimage", "sendfile",
    "sendvoice", "sendvideo", "send", "screenshot", "messages", "checknumberstatus",
    "contacts", "apps", "sessions", "files", "server", "version", "keys", "admin", "tenants",
    "scheduler", "s3",
}  # fmt: skip

WAHA = SessionExtractor(SessionsConfig(), "waha")
EVOLUTION = SessionExtractor(SessionsConfig(), "evolution")


@given(sid=ids)
def test_valid_ids_round_trip(sid: str) -> None:
    enc = quote(sid, safe="")
    assert WAHA.extract("GET", f"/api/sessions/{enc}", "", {}, None) == sid
    assert WAHA.extract("POST", f"/api/sessions/{enc}/start", "", {}, None) == sid
    assert WAHA.extract("GET", f"/api/files/{enc}/x.jpg", "", {}, None) == sid
    if sid.lower() not in RESERVED_LOWER:
        assert WAHA.extract("GET", f"/api/{enc}/chats", "", {}, None) == sid
    assert WAHA.extract("GET", "/api/screenshot", urlencode({"session": sid}), {}, None) == sid
    body = json.dumps({"session": sid}).encode()
    hdrs = {"content-type": "application/json", "content-length": str(len(body))}
    assert WAHA.extract("POST", "/api/sendText", "", hdrs, body) == sid
    assert EVOLUTION.extract("POST", f"/message/sendText/{enc}", "", {}, None) == sid
    assert EVOLUTION.extract("GET", f"/instance/connect/{sid}", "", {}, None) == sid
    assert WAHA.extract("GET", "/", "", {"x-session-id": sid}, None) == sid


@given(profile=st.sampled_from(get_args(Profile)), sid=ids)
def test_header_is_the_last_resort_everywhere(profile: Profile, sid: str) -> None:
    ex = SessionExtractor(SessionsConfig(), profile)
    assert ex.extract("GET", "/nothing/here", "", {"x-session-id": sid}, None) == sid
