"""Header rules of the data path, as byte sets the hot path can test in O(1)."""

from __future__ import annotations

import re
from typing import Final

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones the router rewrites itself. They are
# never copied from the client to the instance.
REQUEST_DROP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
)

# Never copied from the instance to the client; framing is redone by the router.
RESPONSE_DROP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"x-router-instance",
        b"x-request-id",
    }
)

# Printable ASCII without spaces, bounded: safe to echo into headers and logs.
valid_request_id: Final = re.compile(rb"[\x21-\x7e]{1,200}").fullmatch
