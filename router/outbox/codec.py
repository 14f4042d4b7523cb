"""Messages and campaigns as stored in Redis.

A message is one hash value, ``<state digit><meta JSON>\\n<request body>``: the state first
so a script can compare-and-set it without decoding anything, the body last and byte for
byte (a script rewriting the meta keeps everything from the newline). The meta has one-letter
keys and leaves out every default (WAHA's ``/api/sendText``, JSON, POST, normal priority):
with a million messages queued, every byte is a megabyte of Redis memory. A queued campaign
send's meta is ``0{"n":412,"c":"cmp_2bz9k","x":86400.0}``: the session is in the message id,
the sequence number counts microseconds from the millisecond of its id's ULID (it is the
creation time), and times are seconds from the creation, to the millisecond.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from router.ids import ulid_ms
from router.outbox.model import (
    SEQ_EPOCH,
    Campaign,
    CampaignState,
    Message,
    Priority,
    Request,
    State,
    time_of,
)

STATES: Final = tuple(State)
CODE: Final = {s: str(i) for i, s in enumerate(STATES)}  # queued "0", sending "1", ...
DEFAULT_TYPE: Final = "application/json"
DEFAULT_PATH: Final = "/api/sendText"  # WAHA's, the commonest send: not written
SEQ_EPOCH_MS: Final = int(SEQ_EPOCH * 1000)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_str: Callable[[str], str] = json.encoder.encode_basestring


def encode_meta(m: Message) -> bytes:
    """The value's head: state digit and meta (without the newline and the body). Built
    from pieces (every message queued goes through here): the strings through the json
    module's C escaper, numbers by repr."""
    r = m.request
    base = time_of(m.seq)
    out = [CODE[m.state], '{"n":', str(m.seq - _seq_base(m.id))]
    if r.path != DEFAULT_PATH:
        out += [',"p":', _str(r.path)]
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
                       (',"e":', m.error), (',"W":', m.wa_id)):
        if value:
            out += [key, _str(value)]
    for key, when in ((',"b":', m.not_before), (',"x":', m.expires)):
        if when:  # seconds from its creation, to the millisecond: short
            out += [key, repr(round(when - base, 3))]
    for key, number in ((',"a":', m.attempts), (',"y":', m.retry_at), (',"w":', m.waiting_since),
                        (',"z":', m.sent_at), (',"F":', m.finished)):
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
    seq = int(d.get("n", 0)) + _seq_base(message_id)
    base = time_of(seq)
    nb, ex = d.get("b"), d.get("x")
    request = Request(d.get("m", "POST"), d.get("p", DEFAULT_PATH), d.get("q", ""), body,
                      d.get("t", DEFAULT_TYPE), d.get("i", ""))
    return Message(
        message_id, session, request, created=round(time_of(seq), 6), seq=seq,
        priority=Priority.HIGH if d.get("h") else Priority.NORMAL, campaign=d.get("c"),
        ref=d.get("f"), not_before=base + nb if nb is not None else 0.0,
        expires=base + ex if ex is not None else 0.0,
        state=STATES[head[0] - 48], attempts=int(d.get("a", 0)),
        retry_at=float(d.get("y", 0.0)), waiting_since=d.get("w"), instance=d.get("I"),
        sent_at=d.get("z"), response=d.get("R"), error=d.get("e"), delivery=d.get("d"),
        finished=d.get("F"), wa_id=d.get("W"),
    )


def _seq_base(message_id: str) -> int:
    """The sequence number of the millisecond its id was made in: the stored sequence
    number is counted from there (3 digits, not 15)."""
    return (ulid_ms(message_id[4:30]) - SEQ_EPOCH_MS) * 1000


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
