-- wrk script: every request carries X-Session-Id set to one of N session ids.
--
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/sessions.lua http://127.0.0.1:PORT/v1/bench -- N [SEED]
--
-- N (default 1000) session ids "sess-1" .. "sess-N" are used; each request picks one
-- with math.random. The full request strings are built once in init(), so the per-request
-- cost in wrk is one random number and a table lookup: at ~100k req/s on one wrk thread,
-- building headers per request would start to limit the load generator, not the proxy.
-- No response() function is defined: wrk then skips Lua on responses (faster) and counts
-- statuses >= 400 itself ("Non-2xx or 3xx responses").

local requests = {}
local n = 1000

function init(args)
   n = tonumber(args[1]) or 1000
   local seed = tonumber(args[2]) or 1
   math.randomseed(seed)
   for i = 1, n do
      requests[i] = wrk.format(nil, nil, {
         ["Host"] = wrk.headers["Host"],
         ["X-Session-Id"] = "sess-" .. i,
      })
   end
end

function request()
   return requests[math.random(n)]
end
