-- wrk script: POST a body of SIZE bytes (a JSON document carrying a base64-looking media
-- field, as a WhatsApp API "send file" call would), X-Session-Id one of N session ids.
--
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/upload.lua http://127.0.0.1:PORT/v1/upload \
--       -- N SEED SIZE
--
-- The N full requests (headers + body, Content-Length set by wrk.format) are built once in
-- init(): keep N small (100 requests of 64 KiB = 6.4 MB of Lua strings).
-- No response() function: wrk then skips Lua on responses and counts statuses >= 400.

local requests = {}
local n = 100

function init(args)
   n = tonumber(args[1]) or 100
   math.randomseed(tonumber(args[2]) or 1)
   local size = tonumber(args[3]) or 65536
   local head = '{"chatId":"15551234567@c.us","file":{"mimetype":"image/jpeg","data":"'
   local tail = '"}}'
   local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
   local chunk = {}
   for k = 1, 4096 do
      local c = math.random(64)
      chunk[k] = alphabet:sub(c, c)
   end
   chunk = table.concat(chunk)
   local fill = size - #head - #tail
   local data = string.rep(chunk, math.floor(fill / #chunk)) .. chunk:sub(1, fill % #chunk)
   local body = head .. data .. tail
   assert(#body == size, "body size " .. #body .. " ~= " .. size)
   for i = 1, n do
      requests[i] = wrk.format("POST", nil, {
         ["Host"] = wrk.headers["Host"],
         ["Content-Type"] = "application/json",
         ["X-Session-Id"] = "sess-" .. i,
      }, body)
   end
end

function request()
   return requests[math.random(n)]
end
