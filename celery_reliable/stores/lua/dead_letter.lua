-- KEYS: record, due, dead, state
-- ARGV: task_id, reason, error, then the fallback record's fields as name/value pairs
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 and #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('HSET', KEYS[1], 'state', 'dead', 'reason', ARGV[2], 'error', ARGV[3], 'dead', now)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
-- a key still queued or running for this task would answer "in flight" forever
local cur = get_state(KEYS[4])
if cur and cur[3] == ARGV[1] and (cur[1] == 'Q' or cur[1] == 'R') then
  redis.call('DEL', KEYS[4])
end
return 1
