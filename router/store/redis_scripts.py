"""Lua scripts of the Redis store: every write is one of these.

The map scripts take ``KEYS = [assignments, counts, epoch]`` and the channel as their last
argument (a channel is not a key). Each one reads, writes the map and the counts, and
PUBLISHes the change in one atomic step, so a subscriber never sees a change that did not
happen nor misses the order of two changes.

Values in the assignments hash are ``"<instance>:<epoch>"``, or ``"<instance>:<epoch>:m"``
while the session is moving (split at the last colon before the epoch; a value never ends
in ``:m`` otherwise, since it ends with the epoch's digits). Messages are JSON:
``{"op": "set"|"del", "s": session, "i": instance, "e": epoch}`` plus ``"m": true`` on a
``set`` of a moving assignment; for ``del``, ``i`` and ``e`` are those of the assignment
that was removed. A settle publishes a ``set`` at the same epoch without ``m``.

Epochs come from the global ``epoch`` counter, never from the session's own value, so an
epoch is never reused, even after a session is removed and created again. ``next_epoch``
also never goes below ``current + 1``, in case the counter was lost or restored from an
older backup while the map was not.

The leadership scripts take ``KEYS = [leader, leader_token]``. The ``leader`` string is
``"<token>:<holder>"`` with a PX expiry (the lease); ``leader_token`` is a counter INCRed
on every takeover, so a token is never handed out twice.
"""

from __future__ import annotations

from typing import Final

_HELPERS: Final = """
local function split(v)
  local instance, epoch = string.match(v, '^(.*):(%d+):m$')
  if instance then return instance, tonumber(epoch), true end
  instance, epoch = string.match(v, '^(.*):(%d+)$')
  return instance, tonumber(epoch), false
end
local function join(instance, epoch, moving)
  local v = string.format('%s:%d', instance, epoch)
  if moving then v = v .. ':m' end
  return v
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
local v = join(ARGV[2], e, false)
redis.call('HSET', KEYS[1], ARGV[1], v)
count(KEYS[2], ARGV[2], 1)
redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'set', s = ARGV[1], i = ARGV[2], e = e}))
return {1, v}
"""
)

# ARGV: session, instance, expected epoch ('' for none), moving ('1' or '0'), channel.
# Returns {1, value} when moved; {0, current} or {0} (not assigned) when the expected
# epoch is not the current one.
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
local moving = ARGV[4] == '1'
local e = next_epoch(KEYS[3], epoch)
local v = join(ARGV[2], e, moving)
redis.call('HSET', KEYS[1], ARGV[1], v)
if old then count(KEYS[2], old, -1) end
count(KEYS[2], ARGV[2], 1)
local change = {op = 'set', s = ARGV[1], i = ARGV[2], e = e}
if moving then change.m = true end
redis.call('PUBLISH', ARGV[5], cjson.encode(change))
return {1, v}
"""
)

# ARGV: session, epoch, channel. Clears the moving flag when the current epoch is the
# given one (publishing only if it was set). Returns {1, value} (settled, or already was),
# {0, current} when at another epoch, {0} when not assigned.
SETTLE: Final = (
    _HELPERS
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0} end
local instance, epoch, moving = split(cur)
if epoch ~= tonumber(ARGV[2]) then return {0, cur} end
if not moving then return {1, cur} end
local v = join(instance, epoch, false)
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'set', s = ARGV[1], i = instance, e = epoch}))
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

# -- leadership -----------------------------------------------------------------------

_LEASE: Final = """
local function parse(v)
  local token, holder = string.match(v, '^(%d+):(.*)$')
  return tonumber(token), holder
end
"""

# ARGV: holder, ttl in ms. Returns the token when the lease is (now) held by the holder,
# nil when someone else holds it.
ACQUIRE: Final = (
    _LEASE
    + """
local cur = redis.call('GET', KEYS[1])
if cur then
  local token, holder = parse(cur)
  if holder ~= ARGV[1] then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return token
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d:%s', token, ARGV[1]), 'PX', ARGV[2])
return token
"""
)

# ARGV: holder, token, ttl in ms. Returns 1 when extended, 0 when not held with that token.
RENEW: Final = """
if redis.call('GET', KEYS[1]) ~= string.format('%s:%s', ARGV[2], ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# ARGV: holder, token. Returns 1 when released, 0 when not held with that token.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= string.format('%s:%s', ARGV[2], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Every script by the name the store calls it (``Commands.script``).
SCRIPTS: Final = {
    "create": CREATE,
    "move": MOVE,
    "settle": SETTLE,
    "remove": REMOVE,
    "acquire": ACQUIRE,
    "renew": RENEW,
    "release": RELEASE,
}
