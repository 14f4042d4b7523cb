-- wrk script: POST WAHA-style "message" webhooks, as an instance posts them to the router.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/webhook.lua http://127.0.0.1:PORT/webhooks \
--       -- [SESSIONS] [SEED] [TAG]
--
-- Every request is a ~400-byte JSON body {"id","timestamp","event","session","me",
-- "payload",...} of the shape WAHA posts for a "message" event. SESSIONS (default 10)
-- distinct sessions ("wh-1" .. "wh-N"), each with its own sender, chat and text, are used
-- in turn. Every event gets the id "wrk-<TAG>-<thread>-<n>" (n counts this thread's
-- requests; each wrk run gets its own TAG), unique across runs, so whoever receives the
-- events can count distinct ones and duplicates. A request is one concatenation of a
-- precomputed prefix, the counter and a precomputed suffix: wrk's own cost per request
-- stays a few string operations.
-- "timestamp" is the wrk start time in ms (wrk's Lua has no millisecond clock): it is not
-- meant for latency; the benchmark measures delivery latency with its own clients.
-- No response() function: wrk then skips Lua on responses and counts statuses >= 400 itself.

local templates = {}
local n = 10
local counter = 0
local head = ""
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local texts = {
   "Hi! Is my order #%d already on its way? Thanks",
   "Can I change the delivery address for order #%d?",
   "Hello, I would like to book a table for %d people tonight",
   "Please send me the invoice for order #%d",
   "Ok, thank you very much. See you on Monday (ref %d)",
}

function init(args)
   n = tonumber(args[1]) or 10
   local seed = tonumber(args[2]) or 1
   math.randomseed(seed)
   local ts = os.time() * 1000
   local id = (args[3] or "0") .. "-" .. tostring(tid or 1)
   for i = 1, n do
      local phone = string.format("49151%07d", 1000000 + i * 7919 % 9000000)
      local text = string.format(texts[(i - 1) % #texts + 1], 1000 + math.random(8999))
      local prefix = '{"id":"wrk-' .. id .. '-'
      local suffix = '","timestamp":' .. ts .. ',"event":"message","session":"wh-' .. i .. '",'
         .. '"me":{"id":"4930' .. string.format("%08d", i) .. '@c.us","pushName":"Shop ' .. i .. '"},'
         .. '"payload":{"id":"false_' .. phone .. '@c.us_3EB0' .. string.format("%08X%08X", i * 7919, (i * 2654435761) % 4294967296) .. '",'
         .. '"timestamp":' .. math.floor(ts / 1000) .. ',"from":"' .. phone .. '@c.us",'
         .. '"fromMe":false,"to":"4930' .. string.format("%08d", i) .. '@c.us",'
         .. '"body":"' .. text .. '","hasMedia":false,"ack":1,"ackName":"SERVER"},'
         .. '"engine":"WEBJS","environment":{"version":"2024.10.1","tier":"CORE"}}'
      templates[i] = { prefix, suffix }
   end
   head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nContent-Type: application/json\r\nContent-Length: "
end

function request()
   counter = counter + 1
   local t = templates[counter % n + 1]
   local body = t[1] .. counter .. t[2]
   return head .. #body .. "\r\n\r\n" .. body
end
