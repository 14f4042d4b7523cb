"""What an operator or a debugger sees of the data path's objects: state, method, path,
session, instance; never a key (neither from a header nor from the query)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from router.proxy.exchange import Exchange
from router.proxy.phase import Phase
from router.transport.address import Address
from router.transport.upstream import UpstreamConnection, UpstreamPool
from tests.fakes import pure_only

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-key"


def exchange(url: bytes = b"/api/sendText?x-api-key=" + SECRET.encode() + b"&b=1") -> Exchange:
    pure_only("a namespace in place of the client connection")
    conn: Any = SimpleNamespace(server=SimpleNamespace(router=None), loop_time=lambda: 0.0)
    headers = [(b"X-Api-Key", SECRET.encode()), (b"apikey", SECRET.encode()),
               (b"X-Session-Id", b"alice"), (b"X-Request-Id", b"req-7")]
    return Exchange(conn, b"POST", url, headers, True, True, False)


def test_exchange_repr_from_queued_to_done() -> None:
    ex = exchange()
    assert repr(ex) == "<Exchange QUEUED POST /api/sendText id=req-7 reading-body>"
    ex.phase = Phase.SENT
    ex.session = "alice"
    ex.instance = cast(Any, SimpleNamespace(name="waha-2"))
    ex.request_done = True
    ex.retries = 1
    assert repr(ex) == (
        "<Exchange SENT POST /api/sendText id=req-7 session='alice' instance=waha-2 retries=1>"
    )
    ex.phase = Phase.DONE
    assert repr(ex).startswith("<Exchange DONE POST /api/sendText ")


@pytest.mark.parametrize("url", [
    b"/api/sendText?x-api-key=" + SECRET.encode(),
    b"http://user:" + SECRET.encode() + b"@router/api/x?apikey=" + SECRET.encode(),
])
def test_exchange_repr_never_shows_a_key(url: bytes) -> None:
    ex = exchange(url)
    assert SECRET not in repr(ex)


def test_pool_and_connection_repr() -> None:
    pool = UpstreamPool(Address.parse("http://10.0.0.5:3000/waha"), max_idle=4)
    assert repr(pool) == "<UpstreamPool http://10.0.0.5:3000 idle=0/4>"
    up = UpstreamConnection(pool)
    assert repr(up) == "<UpstreamConnection http://10.0.0.5:3000 idle requests=0>"
    pool.release(up)
    assert repr(pool) == "<UpstreamPool http://10.0.0.5:3000 idle=1/4>"
    ex = exchange()
    up.bind(ex, head_request=False)
    assert repr(up) == (
        "<UpstreamConnection http://10.0.0.5:3000 serving "
        "<Exchange QUEUED POST /api/sendText id=req-7 reading-body> requests=1>"
    )
    up.close()
    pool.close()
    assert repr(up) == "<UpstreamConnection http://10.0.0.5:3000 closed requests=1>"
    assert repr(pool) == "<UpstreamPool http://10.0.0.5:3000 idle=0/4 closed>"
