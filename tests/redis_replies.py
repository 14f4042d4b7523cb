"""Redis replies, typed for the tests that read Redis directly.

redis-py annotates replies differently between releases (``Any`` in some; ``bytes | str``, or
``... | None`` where a reply may be absent, in others): these helpers accept either and give
the tests one precise type, checked at run time, never a ``type: ignore``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis


def text(x: bytes | str) -> str:
    """A reply as text: UTF-8 bytes (a client without ``decode_responses``) or already a str."""
    return x.decode() if isinstance(x, bytes) else x


def stream_entries(reply: object) -> list[tuple[str, dict[bytes, bytes]]]:
    """An ``XRANGE`` reply from a client without ``decode_responses``: ``[(id, fields)]``."""
    assert isinstance(reply, list), reply
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for entry_id, fields in reply:
        assert isinstance(entry_id, bytes) and isinstance(fields, dict), (entry_id, fields)
        entries.append((entry_id.decode(), fields))
    return entries


def number(reply: object) -> int:
    """An integer reply, or a string/bytes holding one (``GET`` of a counter)."""
    assert isinstance(reply, int | bytes | str), reply
    return int(reply)


async def command(client: Redis, *args: str) -> object:
    """``execute_command`` through a typed ``Callable``: redis-py annotates it in some
    releases only."""
    run: Callable[..., Awaitable[object]] = client.execute_command
    return await run(*args)
