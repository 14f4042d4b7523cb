"""Many fields in one Redis script argument, each ``<length>:<bytes>``.

redis-py encodes every argument of a command on its own, in Python: for a script that
takes thousands of values (a campaign, a batch of writes) that cost more than the script
itself. ``pack`` joins the fields of one item into one argument; ``FIELDS_LUA`` is the
scripts' ``fields(arg)`` that splits it again.
"""

from __future__ import annotations

from typing import Final

FIELDS_LUA: Final = """
local function fields(a)
  local out, i = {}, 1
  while i <= #a do
    local c = string.find(a, ':', i, true)
    local j = c + tonumber(string.sub(a, i, c - 1))
    out[#out + 1] = string.sub(a, c + 1, j)
    i = j + 1
  end
  return out
end
"""


def pack(*fields: str | bytes) -> bytes:
    out = []
    for f in fields:
        raw = f.encode() if isinstance(f, str) else f
        out.append(b"%d:%s" % (len(raw), raw))
    return b"".join(out)


def unpack(raw: bytes) -> list[bytes]:
    """``pack``'s inverse."""
    out, i = [], 0
    while i < len(raw):
        colon = raw.index(b":", i)
        end = colon + 1 + int(raw[i:colon])
        out.append(raw[colon + 1:end])
        i = end
    return out
