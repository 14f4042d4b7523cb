-- wrk script: POST WAHA sendText bodies, with or without a unique Idempotency-Key.
--
--   wrk -t1 -c32 -d8s --latency -s bench/wrk/keyed.lua http://127.0.0.1:PORT/api/sendText -- [SESSIONS] [MODE] [TAG]
--
-- Sessions "s-1" .. "s-N" (default 1000) in turn, a ~110-byte JSON body each (the session
-- in the body, as WAHA takes it). MODE "keyed" adds "Idempotency-Key: TAG-T-I": TAG names
-- the wrk run (the benchmark gives every run its own), T is the thread's number (from
-- setup()) and I counts the thread's requests, so no two requests of any run share a key;
-- "plain" (the default) sends no key. One concatenation per request. No response(): wrk
-- counts statuses >= 400 itself.

local started = 0

function setup(thread)
   started = started + 1
   thread:set("thread_number", started)
end

local n = 1000
local i = 0
local head, key

function init(args)
   n = tonumber(args[1]) or 1000
   head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nContent-Type: application/json\r\n"
   if args[2] == "keyed" then
      key = "Idempotency-Key: " .. (args[3] or "run") .. "-" .. (thread_number or 1) .. "-"
   end
end

function request()
   i = i + 1
   local body = '{"session":"s-' .. (i % n + 1) .. '","chatId":"4915112345678@c.us","text":"Your order #'
      .. i .. ' has shipped"}'
   if key then
      return head .. key .. i .. "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
   end
   return head .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end
