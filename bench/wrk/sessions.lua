-- wrk script: every request carries X-Session-Id set to one of N session ids.
--
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/sessions.lua http://127.0.0.1:PORT/v1/bench -- N [SEED]
--
-- N (default 1000) session ids "sess-1" .. "sess-N" are used; each request picks one
-- with math.random. The request is one concatenation of a prefix built once in init(),
-- the number and "\r\n\r\n": its cost in wrk is the same whatever N. (An earlier version
-- kept N prebuilt request strings in a table: at N = 100,000 that is ~10 MB read at
-- random, and wrk took 40% more CPU per request than at N = 1,000, CPU it took from the
-- proxy under test on a 2-core machine; the concatenation is as cheap as the table at
-- N = 1,000.)
-- No response() function is defined: wrk then skips Lua on responses (faster) and counts
-- statuses >= 400 itself ("Non-2xx or 3xx responses").

local n = 1000
local prefix, suffix

function init(args)
   n = tonumber(args[1]) or 1000
   local seed = tonumber(args[2]) or 1
   math.randomseed(seed)
   prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nX-Session-Id: sess-"
   suffix = "\r\n\r\n"
end

function request()
   return prefix .. math.random(n) .. suffix
end
