"""Generated media: tiny PNGs and a deterministic byte pattern for streamed files."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

CHUNK = 64 * 1024
DEFAULT_FILE_BYTES = 4 * 1024 * 1024
PERIOD = 251  # prime: chunk boundaries never line up with the pattern


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


QR_PNG = png(4, 4, (0, 0, 0))
SCREENSHOT_PNG = png(8, 6, (37, 211, 102))

_TILE = bytes(i % PERIOD for i in range(CHUNK + PERIOD))


def pattern(offset: int, length: int) -> bytes:
    """Bytes ``offset .. offset+length`` of the file pattern: byte ``i`` is ``i % 251``."""
    out = bytearray()
    while length > 0:
        n = min(length, CHUNK)
        start = offset % PERIOD
        out += _TILE[start : start + n]
        offset += n
        length -= n
    return bytes(out)


def file_chunks(size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The pattern of a ``size``-byte file, ``chunk`` bytes at a time (never whole)."""
    chunk = min(chunk, CHUNK)
    offset = 0
    while offset < size:
        n = min(chunk, size - offset)
        start = offset % PERIOD
        yield _TILE[start : start + n]
        offset += n
