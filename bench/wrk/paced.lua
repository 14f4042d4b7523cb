-- wrk script: a fixed request rate (wrk2-style pacing with wrk's delay() hook), every
-- request with X-Session-Id set to one of N session ids (as sessions.lua).
--
--   wrk -t1 -c32 -d15s --latency -s bench/wrk/paced.lua http://127.0.0.1:PORT/v1/bench \
--       -- N SEED DELAY_MS
--
-- After each response, a connection waits delay() ms before sending its next request.
-- With C connections, DELAY_MS = C / RATE * 1000 gives about RATE req/s (a little less:
-- each cycle also takes the response's latency; latency_bench.py corrects DELAY_MS from
-- the warmup's achieved rate). Each wait is drawn uniformly from 0.5..1.5 x DELAY_MS (same
-- mean): otherwise the C connections, all started at once, would stay in phase and send
-- their requests in bursts of C. wrk's timers have 1 ms resolution, hence the rounding.
-- Latency is measured from when a request is written: at a rate far below saturation
-- nothing queues in wrk, so this is the latency the proxy and the backend add.
-- No response() function: wrk then skips Lua on responses and counts statuses >= 400.

local n = 1000
local mean = 16
local prefix, suffix

function init(args)
   n = tonumber(args[1]) or 1000
   math.randomseed(tonumber(args[2]) or 1)
   mean = tonumber(args[3]) or 16
   -- as in sessions.lua: one concatenation per request, the same cost whatever N
   prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nX-Session-Id: sess-"
   suffix = "\r\n\r\n"
end

function delay()
   return math.floor(mean * (0.5 + math.random()) + 0.5)
end

function request()
   return prefix .. math.random(n) .. suffix
end
