"""Lua scripts of the Redis assignment store: every write is one of these.

All three take ``KEYS = [assignments, counts, epoch]`` and the channel as their last
argument (a channel is not a key). Each one reads, writes the map and the counts, and
PUBLISHes the change in one atomic step, so a subscriber never sees a change that did not
happen nor misses the order of two changes.

Values in the assignments hash are ``"<instance>:<epoch>"`` (split at the last colon).
Messages are JSON: ``{"op": "set"|"del", "s": session, "i": instance, "e": epoch}``; for
``del``, ``i`` and ``e`` are those of the assignment that was removed.

Epochs come from the global ``epoch`` counter, never from the session's own value, so an
epoch is never reused, even after a session is removed and created again. ``next_epoch``
also never goes below ``current + 1``, in case the counter was lost or restored from an
older backup while the map was not.
"""

from __future__ import annotations

from typing import Final

_HELPERS: Final = """
local function split(v)
  local instance, epoch = string.match(v, '^(.*):(%d+)$')
  return instance, tonumber(epoch)
end
local function count(key, instance, delta)
  if redis.call('HINCRBY', key, instance, delta) <= 0 then
    redis.call('HDEL', key, instance)
  end
end
local function next_epoch(key, floor)
  local e = redis.call('INCR', key)
  if e <= floor then
    e = floor + 1
    redis.call('SET', key, e)
  end
  return e
end
"""

# ARGV: session, instance, channel. Returns {1, value} when created, {0, value} when the
# session already had an assignment (first writer wins).
CREATE: Final = (
    _HELPERS
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {0, cur} end
local e = next_epoch(KEYS[3], 0)
local v = string.format('%s:%d', ARGV[2], e)
redis.call('HSET', KEYS[1], ARGV[1], v)
count(KEYS[2], ARGV[2], 1)
redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'set', s = ARGV[1], i = ARGV[2], e = e}))
return {1, v}
"""
)

# ARGV: session, instance, expected epoch ('' for none), channel. Returns {1, value} when
# moved; {0, current} or {0} (not assigned) when the expected epoch is not the current one.
MOVE: Final = (
    _HELPERS
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local old, epoch = nil, 0
if cur then old, epoch = split(cur) end
if ARGV[3] ~= '' and (not cur or epoch ~= tonumber(ARGV[3])) then
  if cur then return {0, cur} end
  return {0}
end
local e = next_epoch(KEYS[3], epoch)
local v = string.format('%s:%d', ARGV[2], e)
redis.call('HSET', KEYS[1], ARGV[1], v)
if old then count(KEYS[2], old, -1) end
count(KEYS[2], ARGV[2], 1)
redis.call('PUBLISH', ARGV[4], cjson.encode({op = 'set', s = ARGV[1], i = ARGV[2], e = e}))
return {1, v}
"""
)

# ARGV: session, expected epoch ('' for none), channel. Returns {1, removed value},
# {0} when not assigned, {-1, current} when the expected epoch is not the current one.
REMOVE: Final = (
    _HELPERS
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0} end
local old, epoch = split(cur)
if ARGV[2] ~= '' and epoch ~= tonumber(ARGV[2]) then return {-1, cur} end
redis.call('HDEL', KEYS[1], ARGV[1])
count(KEYS[2], old, -1)
redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'del', s = ARGV[1], i = old, e = epoch}))
return {1, cur}
"""
)
