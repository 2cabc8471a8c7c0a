-- ARGV: key base "{prefix:budget:scope}:", ratio, floor per second, window seconds
-- One per-second counter of first attempts (f) and of retries (r), summed over the window.
local now = math.floor(now_ms() / 1000)
local window = tonumber(ARGV[4])
local firsts, retries = 0, 0
for s = now - window + 1, now do
  firsts = firsts + (tonumber(redis.call('GET', ARGV[1] .. 'f:' .. s)) or 0)
  retries = retries + (tonumber(redis.call('GET', ARGV[1] .. 'r:' .. s)) or 0)
end
if retries >= tonumber(ARGV[2]) * firsts + tonumber(ARGV[3]) * window then return 0 end
local rk = ARGV[1] .. 'r:' .. now
redis.call('INCR', rk)
redis.call('EXPIRE', rk, window + 2)
return 1
