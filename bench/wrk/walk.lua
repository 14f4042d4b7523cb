-- wrk script: walk the session ids "sess-1" .. "sess-N" in order, over and over, so that
-- every session is requested (and placed by the router) once in the first N requests.
--
--   wrk -t1 -c32 -d600s -s bench/wrk/walk.lua http://127.0.0.1:PORT/v1/bench -- N
--
-- growth_bench.py runs it until the router's /admin/instances counts N sessions, then stops
-- it (SIGINT). Requests are built per call (a placement walk is not a measurement).

local n = 1000
local i = 0
local host = ""

function init(args)
   n = tonumber(args[1]) or 1000
   host = wrk.headers["Host"]
end

function request()
   i = i % n + 1
   return wrk.format(nil, nil, { ["Host"] = host, ["X-Session-Id"] = "sess-" .. i })
end
