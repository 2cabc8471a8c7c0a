-- KEYS: breaker hash; ARGV: owner, probe_ttl_ms
-- returns {allowed 0/1, state, wait_ms, failures}
local now = now_ms()
local b = redis.call('HMGET', KEYS[1], 'state', 'failures', 'open_until', 'probe', 'probe_until')
local failures = tonumber(b[2]) or 0
if (not b[1]) or b[1] == 'closed' then return {1, 'closed', 0, failures} end
local open_until = tonumber(b[3]) or 0
if now < open_until then return {0, 'open', open_until - now, failures} end
local probe_until = tonumber(b[5]) or 0
if b[4] and b[4] ~= '' and b[4] ~= ARGV[1] and probe_until > now then
  return {0, 'probing', probe_until - now, failures}
end
redis.call('HSET', KEYS[1], 'probe', ARGV[1], 'probe_until', now + tonumber(ARGV[2]))
return {1, 'half_open', 0, failures}
