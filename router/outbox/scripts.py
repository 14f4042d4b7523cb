"""The outbox's Lua scripts (``router.outbox.redis_store`` names the keys they use)."""

from __future__ import annotations

from router.outbox.model import SEQ_EPOCH
from router.store.packing import FIELDS_LUA

# Shared by the scripts below. ``write`` stores a message's new head (state digit + meta)
# in front of its stored body if its state is still ``old`` (compare-and-set), and keeps
# the counts, the session's queue and ``oldest`` in step; it answers '' (written), 'state'
# (the state had changed), 'gone' (no such message) or 'finished:<campaign>'.
LIB_SOURCE = """
local P = ARGV[1]
local RANK = 1e15
local NAME = {['0'] = 'queued', ['1'] = 'sending', ['2'] = 'sent', ['3'] = 'failed',
              ['4'] = 'unknown', ['5'] = 'cancelled', ['6'] = 'expired'}
local function tag(s) return P .. '{s:' .. s .. '}:' end
@FIELDS@local SEQ_EPOCH = @SEQ_EPOCH@
local function due_of(score) if score >= RANK then return score - RANK end return score end
local function oldest(s, t)
  local a = redis.call('ZRANGE', t .. 'q', 0, 0, 'WITHSCORES')
  if #a == 0 then redis.call('ZREM', P .. 'oldest', s) return end
  local best = tonumber(a[2])
  if best < RANK then
    local b = redis.call('ZRANGEBYSCORE', t .. 'q', RANK, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #b > 0 then best = math.min(best, tonumber(b[2]) - RANK) end
  else
    best = best - RANK
  end
  redis.call('ZADD', P .. 'oldest', best, s)
end
local function wake(s, t, now)
  -- a session nobody serves looks at its (maybe new) head now; one being served does when
  -- its turn ends (lowering its time would crowd the due window with leased sessions)
  if redis.call('EXISTS', t .. 'lease') == 0 then
    redis.call('ZADD', P .. 'due', 'LT', now, s)
  end
end
local function write(s, id, old, head, cmp, stamp, score, now)
  local t = tag(s)
  local v = redis.call('HGET', t .. 'm', id)
  if not v then return 'gone' end
  local cur = string.sub(v, 1, 1)
  if old ~= '' and cur ~= old then return 'state' end
  local new = string.sub(head, 1, 1)
  redis.call('HSET', t .. 'm', id, head .. string.sub(v, (string.find(v, '\\n', 1, true))))
  if cur == new then return '' end
  redis.call('HINCRBY', P .. 'totals', NAME[cur], -1)
  redis.call('HINCRBY', P .. 'totals', NAME[new], 1)
  local live_before, live_after = cur <= '1', new <= '1'
  if live_before and not live_after then
    redis.call('ZREM', t .. 'q', id)
    redis.call('ZADD', P .. 'done', stamp, id .. s)  -- the ULID (26 characters), the session
    oldest(s, t)
  elseif live_after and not live_before then  -- an explicit retry: back in its queue
    redis.call('ZADD', t .. 'q', score, id)
    redis.call('ZREM', P .. 'done', id .. s)
    redis.call('ZADD', P .. 'oldest', 'LT', due_of(tonumber(score)), s)
    wake(s, t, now)
  end
  if cmp == '' then return '' end
  local c = P .. 'c:' .. cmp
  redis.call('HINCRBY', c, 'n:' .. NAME[cur], -1)
  redis.call('HINCRBY', c, 'n:' .. NAME[new], 1)
  if live_after or redis.call('HGET', c, 'state') ~= 'running' then return '' end
  if tonumber(redis.call('HGET', c, 'n:queued') or '0') > 0 then return '' end
  if tonumber(redis.call('HGET', c, 'n:sending') or '0') > 0 then return '' end
  redis.call('HSET', c, 'state', 'finished', 'finished', stamp)
  return 'finished:' .. cmp
end
"""
# ``fields``: one argument carrying many fields (``router.store.packing``)
LIB = LIB_SOURCE.replace("@SEQ_EPOCH@", repr(SEQ_EPOCH)).replace("@FIELDS@", FIELDS_LUA)

# ARGV: P, now, then one packed group per add: idem digest, fingerprint, ttl ms, campaign,
# then (id, session, score, value) per message; answers, per group, '' (queued) or what the
# key queued before.
ADD = LIB + """
local now = ARGV[2]
local out = {}
for g = 3, #ARGV do
  local f = fields(ARGV[g])
  local idem, fingerprint, ttl, cmp = f[1], f[2], f[3], f[4]
  local prev = false
  if idem ~= '' then prev = redis.call('GET', P .. 'idem:' .. idem) end
  if prev then
    out[#out + 1] = prev
  else
    -- per session: its messages and queue entries (written with one HSET and one ZADD a
    -- session: each command written is also one in the AOF), earliest due, lowest score
    local hs, zs, first, low, n = {}, {}, {}, {}, 0
    for i = 5, #f, 4 do
      local id, s, score = f[i], f[i + 1], tonumber(f[i + 2])
      local h = hs[s]
      if not h then
        h = {}
        hs[s], zs[s] = h, {}
      end
      local z = zs[s]
      h[#h + 1] = id
      h[#h + 1] = f[i + 3]
      z[#z + 1] = f[i + 2]
      z[#z + 1] = id
      local d = due_of(score)
      if not first[s] or d < first[s] then first[s] = d end
      if not low[s] or score < low[s] then low[s] = score end
      n = n + 1
    end
    for s, d in pairs(first) do
      local t = tag(s)
      local h, z = hs[s], zs[s]
      for j = 1, #h, 2000 do  -- unpack has a stack limit: at most 1,000 pairs a call
        redis.call('HSET', t .. 'm', unpack(h, j, math.min(j + 1999, #h)))
        redis.call('ZADD', t .. 'q', unpack(z, j, math.min(j + 1999, #z)))
      end
      redis.call('ZADD', P .. 'oldest', 'LT', d, s)
      local head = redis.call('ZRANGE', t .. 'q', 0, 0, 'WITHSCORES')
      if tonumber(head[2]) == low[s] then
        -- one of these is its new head: its turn now, or when it is due if scheduled
        -- (more than a second from now: no turn that would only say "later")
        local at = SEQ_EPOCH + d / 1e6
        wake(s, t, at > tonumber(now) + 1 and at or now)
      else
        redis.call('ZADD', P .. 'due', 'NX', now, s)
      end
    end
    redis.call('HINCRBY', P .. 'totals', 'queued', n)
    if cmp ~= '' then
      redis.call('HINCRBY', P .. 'c:' .. cmp, 'n:queued', n)
      redis.call('HINCRBY', P .. 'c:' .. cmp, 'total', n)
    end
    if idem ~= '' then
      local ids = {}
      for i = 5, #f, 4 do ids[#ids + 1] = #f[i] .. ':' .. f[i] .. #f[i + 1] .. ':' .. f[i + 1] end
      redis.call('SET', P .. 'idem:' .. idem, fingerprint .. '\\n' .. table.concat(ids), 'PX', ttl)
    end
    out[#out + 1] = ''
  end
end
return out
"""

# ARGV: P, now, limit, holder, lease ms, horizon: leases up to ``limit`` due sessions and
# answers, for each, 7 values: session, head id, head value, pacing not_before, paused
# (0/1), the head's campaign's state, recent send times (comma-separated); then when the
# next session is due ('' if none).
TURNS = LIB + """
local now, limit, holder, ttl, horizon = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, s in ipairs(due) do
  local t = tag(s)
  if redis.call('SET', t .. 'lease', holder, 'NX', 'PX', ttl) then
    local h = redis.call('ZRANGE', t .. 'q', 0, 0)
    local v = h[1] and redis.call('HGET', t .. 'm', h[1])
    if not h[1] then
      redis.call('ZREM', P .. 'due', s)
      redis.call('DEL', t .. 'lease')
    elseif not v then  -- a queue entry without its message: drop it
      redis.call('ZREM', t .. 'q', h[1])
      redis.call('DEL', t .. 'lease')
    else
      redis.call('ZADD', P .. 'due', now + tonumber(ttl) / 1000, s)
      local meta = string.sub(v, 1, (string.find(v, '\\n', 1, true)))
      local cmp = string.match(meta, '"c":"([^"]*)"')
      local cs = cmp and redis.call('HGET', P .. 'c:' .. cmp, 'state') or ''
      local sent = ''
      if horizon > 0 then
        sent = table.concat(redis.call('ZRANGEBYSCORE', t .. 'sent', '(' .. (now - horizon), '+inf'), ',')
      end
      out[#out + 1] = s
      out[#out + 1] = h[1]
      out[#out + 1] = v
      out[#out + 1] = redis.call('HGET', t .. 'pace', 'nb') or ''
      out[#out + 1] = redis.call('SISMEMBER', P .. 'paused', s)
      out[#out + 1] = cs
      out[#out + 1] = sent
    end
  end
end
local first = redis.call('ZRANGE', P .. 'due', 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] or ''  -- when the next session is due (to sleep until then)
return out
"""

# ARGV: P, now, then one packed op each, a kind and its fields:
#   B session id holder head campaign score: begin a send (answers ok|lost|cancelled|paused)
#   E session id holder old head campaign stamp score at decided sent_at nb trim: end a turn
#   C session id old head campaign stamp score: a change outside any turn
#   T session id wa_id sent_at key: a sent message's instance id (its acks) and unacked
#     entry; a message.any remembered for ``key`` was this message's: forgotten
#   A session id: acked (no longer unacked)
#   U session id key now window: unknown, waiting for its message.any ('seen:<wa id>' if
#     one came within the window)
#   S session key now window wa: a message.any: answers the unknown message it settles, or
#     '' (remembered, unless its wa id is a message already sent)
#   X upto: unacked messages sent before ``upto`` that were not counted yet (fleet-wide once)
OPS = LIB + """
local now = ARGV[2]
local out = {}
for o = 3, #ARGV do
  local f = fields(ARGV[o])
  local kind, s, id = f[1], f[2], f[3]
  local t = tag(s)
  local answer = ''
  if kind == 'B' then
    local holder, head, cmp, score = f[4], f[5], f[6], f[7]
    local cs = cmp ~= '' and redis.call('HGET', P .. 'c:' .. cmp, 'state')
    answer = 'ok'
    if redis.call('GET', t .. 'lease') ~= holder then
      answer = 'lost'
    elseif cs == 'cancelled' or cs == 'paused' then
      answer = cs
    elseif write(s, id, '0', head, cmp, now, score, now) ~= '' then
      answer = 'lost'
    end
  elseif kind == 'E' then
    local holder, old, head, cmp, stamp, score, at, decided, sent_at, nb, trim =
      f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14]
    if head ~= '' then answer = write(s, id, old, head, cmp, stamp, score, now) end
    if sent_at ~= '' then
      redis.call('ZADD', t .. 'sent', sent_at, sent_at)
      redis.call('ZREMRANGEBYSCORE', t .. 'sent', '-inf', '(' .. trim)
      redis.call('HSET', t .. 'pace', 'nb', nb)
    end
    local lease = redis.call('GET', t .. 'lease')
    if lease == holder then redis.call('DEL', t .. 'lease') end
    if lease == holder or not lease then
      local h = redis.call('ZRANGE', t .. 'q', 0, 0)
      if not h[1] then
        redis.call('ZREM', P .. 'due', s)
      elseif h[1] ~= decided and redis.call('ZSCORE', t .. 'q', decided) then
        redis.call('ZADD', P .. 'due', now, s)  -- a new head went ahead: look at it at once
      else
        redis.call('ZADD', P .. 'due', at, s)
      end
    end
  elseif kind == 'C' then
    answer = write(s, id, f[4], f[5], f[6], f[7], f[8], now)
  elseif kind == 'T' then
    local wa, key = f[4], f[6]
    if wa ~= '' then redis.call('HSET', t .. 'wa', wa, id) end
    redis.call('ZADD', P .. 'unacked', f[5], id .. s)
    if key ~= '' then
      local seen_wa = redis.call('HGET', t .. 'seenwa', key)
      if seen_wa and (wa == '' or seen_wa == '' or seen_wa == wa) then
        redis.call('ZREM', t .. 'seen', key)
        redis.call('HDEL', t .. 'seenwa', key)
      end
    end
  elseif kind == 'A' then
    redis.call('ZREM', P .. 'unacked', id .. s)
  elseif kind == 'U' then
    local key, at, window = f[4], tonumber(f[5]), tonumber(f[6])
    local seen = redis.call('ZSCORE', t .. 'seen', key)
    if seen and tonumber(seen) >= at - window then
      answer = 'seen:' .. (redis.call('HGET', t .. 'seenwa', key) or '')
      redis.call('ZREM', t .. 'seen', key)
      redis.call('HDEL', t .. 'seenwa', key)
    else
      redis.call('HSET', t .. 'unk', key, id)
    end
  elseif kind == 'S' then
    local key, at, window, wa = f[3], tonumber(f[4]), tonumber(f[5]), f[6]
    local waiting = redis.call('HGET', t .. 'unk', key)
    if wa ~= '' and redis.call('HEXISTS', t .. 'wa', wa) == 1 then
      -- the message.any of a message sent (and answered) already: settles nothing
    elseif waiting then
      redis.call('HDEL', t .. 'unk', key)
      answer = waiting
    else
      -- remembered for an unknown message to come
      for _, old in ipairs(redis.call('ZRANGEBYSCORE', t .. 'seen', '-inf', '(' .. (at - window))) do
        redis.call('HDEL', t .. 'seenwa', old)
      end
      redis.call('ZREMRANGEBYSCORE', t .. 'seen', '-inf', '(' .. (at - window))
      redis.call('ZADD', t .. 'seen', at, key)
      redis.call('HSET', t .. 'seenwa', key, wa)
    end
  elseif kind == 'X' then
    local upto = f[2]
    local from = redis.call('GET', P .. 'unacked_counted') or '-inf'
    if from == '-inf' or tonumber(from) < tonumber(upto) then
      answer = tostring(redis.call('ZCOUNT', P .. 'unacked', '(' .. from, upto))
      redis.call('SET', P .. 'unacked_counted', upto)
    else
      answer = '0'
    end
  end
  out[#out + 1] = answer
end
return out
"""

# ARGV: P, session, now: a turn now for a session with messages that nobody serves.
WAKE = """
local t = ARGV[1] .. '{s:' .. ARGV[2] .. '}:'
if redis.call('EXISTS', t .. 'lease') == 0 and redis.call('ZCARD', t .. 'q') > 0 then
  redis.call('ZADD', ARGV[1] .. 'due', 'LT', ARGV[3], ARGV[2])
end
return 1
"""

# ARGV: P, now, lease ms, holder, sessions...: keep serving them (only those still this holder's).
RENEW = """
local P, now, ttl, holder = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
for i = 5, #ARGV do
  local t = P .. '{s:' .. ARGV[i] .. '}:'
  if redis.call('GET', t .. 'lease') == holder then
    redis.call('PEXPIRE', t .. 'lease', ttl)
    redis.call('ZADD', P .. 'due', 'XX', now + tonumber(ttl) / 1000, ARGV[i])
  end
end
return 1
"""

SWEEP = """
local P, before, limit = ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', P .. 'done', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local t, ulid = P .. '{s:' .. string.sub(id, 27) .. '}:', string.sub(id, 1, 26)
  local v = redis.call('HGET', t .. 'm', ulid)
  local wa = v and string.match(string.sub(v, 1, (string.find(v, '\\n', 1, true))), '"W":"([^"]*)"')
  if wa then redis.call('HDEL', t .. 'wa', wa) end
  redis.call('ZREM', P .. 'unacked', id)
  redis.call('HDEL', t .. 'm', ulid)
  redis.call('ZREM', P .. 'done', id)
end
local old = redis.call('ZRANGEBYSCORE', P .. 'campaigns', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, c in ipairs(old) do
  local f = redis.call('HGET', P .. 'c:' .. c, 'finished')
  if f and f ~= '' and tonumber(f) < tonumber(before) then
    redis.call('DEL', P .. 'c:' .. c)
    redis.call('ZREM', P .. 'campaigns', c)
  end
end
return #ids
"""

# ARGV: P, limit: the deepest queues among the first ``limit`` scheduled sessions.
DEEPEST = """
local P = ARGV[1]
local out = {}
for _, s in ipairs(redis.call('ZRANGE', P .. 'due', 0, tonumber(ARGV[2]) - 1)) do
  local n = redis.call('ZCARD', P .. '{s:' .. s .. '}:q')
  if n > 0 then
    out[#out + 1] = s
    out[#out + 1] = n
  end
end
return out
"""
