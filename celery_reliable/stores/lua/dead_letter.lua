-- KEYS: record, due, dead
-- ARGV: task_id, reason, error, then the fallback record's fields as name/value pairs
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 and #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('HSET', KEYS[1], 'state', 'dead', 'reason', ARGV[2], 'error', ARGV[3], 'dead', now)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
