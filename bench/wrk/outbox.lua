-- wrk script: POST WAHA sendText bodies, as an app queues sends in the outbox.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/outbox.lua http://127.0.0.1:PORT/outbox/api/sendText -- [SESSIONS] [NOT_BEFORE]
--
-- Sessions "ob-1" .. "ob-N" (default 1000) in turn, a ~120-byte body each; one
-- concatenation per request. NOT_BEFORE (Unix seconds): sent as X-Outbox-Not-Before, so
-- the messages stay queued (enqueue measured alone). No response(): wrk counts statuses
-- >= 400 itself.

local n = 1000
local i = 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
   if args[1] then n = tonumber(args[1]) end
   if args[2] then headers["X-Outbox-Not-Before"] = args[2] end
end

function request()
   i = i + 1
   local body = '{"session":"ob-' .. (i % n + 1) .. '","chatId":"4915112345678@c.us","text":"Your order #' .. i .. ' has shipped"}'
   return wrk.format("POST", nil, headers, body)
end
