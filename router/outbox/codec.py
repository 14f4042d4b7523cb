"""Messages and campaigns as stored in Redis.

A message is one hash value, ``<state digit><meta JSON>\\n<request body>``: the state first
so a script can compare-and-set it without decoding anything, the body last and byte for
byte (a script rewriting the meta keeps everything from the newline). The meta has one-letter
keys and leaves out every default (a queued WAHA send's meta is about 50 bytes): with a
million messages queued, every byte is a megabyte of Redis memory. The session and the
creation time are not stored: the message id names the session, and the sequence number is
the creation time in microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from router.outbox.model import Campaign, CampaignState, Message, Priority, Request, State, time_of

STATES: Final = tuple(State)
CODE: Final = {s: str(i) for i, s in enumerate(STATES)}  # queued "0", sending "1", ...
DEFAULT_TYPE: Final = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_str: Callable[[str], str] = json.encoder.encode_basestring


def encode_meta(m: Message) -> bytes:
    """The value's head: state digit and meta (without the newline and the body). Built
    from pieces (every message queued goes through here): the strings through the json
    module's C escaper, numbers by repr."""
    r = m.request
    out = [CODE[m.state], '{"p":', _str(r.path), ',"n":', str(m.seq)]
    if r.method != "POST":
        out += [',"m":', _str(r.method)]
    if r.query:
        out += [',"q":', _str(r.query)]
    if r.content_type != DEFAULT_TYPE:
        out += [',"t":', _str(r.content_type)]
    if r.request_id:
        out += [',"i":', _str(r.request_id)]
    if m.priority is Priority.HIGH:
        out.append(',"h":1')
    for key, value in ((',"c":', m.campaign), (',"f":', m.ref), (',"I":', m.instance),
                       (',"e":', m.error)):
        if value:
            out += [key, _str(value)]
    for key, number in ((',"b":', m.not_before), (',"x":', m.expires), (',"a":', m.attempts),
                        (',"y":', m.retry_at), (',"w":', m.waiting_since), (',"z":', m.sent_at),
                        (',"F":', m.finished)):
        if number:
            out += [key, repr(number)]
    for key, doc in ((',"R":', m.response), (',"d":', m.delivery)):
        if doc:
            out += [key, _dumps(doc)]
    out.append("}")
    return "".join(out).encode()


def encode(m: Message) -> bytes:
    return encode_meta(m) + b"\n" + m.request.body


def decode(message_id: str, session: str, raw: bytes) -> Message:
    head, _, body = raw.partition(b"\n")
    d: dict[str, Any] = json.loads(head[1:])
    seq = int(d.get("n", 0))
    request = Request(d.get("m", "POST"), d.get("p", ""), d.get("q", ""), body,
                      d.get("t", DEFAULT_TYPE), d.get("i", ""))
    return Message(
        message_id, session, request, created=round(time_of(seq), 6), seq=seq,
        priority=Priority.HIGH if d.get("h") else Priority.NORMAL, campaign=d.get("c"),
        ref=d.get("f"), not_before=float(d.get("b", 0.0)), expires=float(d.get("x", 0.0)),
        state=STATES[head[0] - 48], attempts=int(d.get("a", 0)),
        retry_at=float(d.get("y", 0.0)), waiting_since=d.get("w"), instance=d.get("I"),
        sent_at=d.get("z"), response=d.get("R"), error=d.get("e"), delivery=d.get("d"),
        finished=d.get("F"),
    )


def campaign_fields(c: Campaign) -> dict[Any, Any]:
    return {"name": c.name, "state": str(c.state), "created": repr(c.created),
            "finished": "" if c.finished is None else repr(c.finished)}


def decode_campaign(campaign_id: str, h: dict[bytes, bytes]) -> Campaign:
    def text(key: str) -> str:
        return h.get(key.encode(), b"").decode()

    counts = {str(s): int(h.get(f"n:{s}".encode(), b"0")) for s in State}
    finished = text("finished")
    return Campaign(campaign_id, text("name"), created=float(text("created") or 0),
                    state=CampaignState(text("state") or "running"),
                    total=int(h.get(b"total", b"0")), counts=counts,
                    finished=float(finished) if finished else None)
