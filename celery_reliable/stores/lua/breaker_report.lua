-- KEYS: breaker hash; ARGV: ok (1/0), threshold, cool_down_ms
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'probe', '')
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'open' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now_ms() + tonumber(ARGV[3]),
    'probe', '')
  return 'open'
end
return state
