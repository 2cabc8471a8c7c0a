-- KEYS: due, lease clock
-- ARGV: record key prefix, limit, rescue_after_ms, backoff_cap_ms, key prefix, outage_ms
-- Record and key names are built here from the due set's members; they share its hash tag.
-- A record whose key is running for it was claimed, and its lease lapsed: 'running'.
local now = lease_now(KEYS[2], ARGV[6], true)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local rk = ARGV[1] .. id
  local f = redis.call('HMGET', rk, 'name', 'key', 'fp', 'body', 'ctype', 'cenc', 'opts', 'pub',
    'state', 'resc')
  if not f[1] then
    redis.call('ZREM', KEYS[1], id)
  else
    local resc = tonumber(f[10]) or 0
    local state = f[9]
    local cur = get_state(ARGV[5] .. f[2])
    if cur and cur[1] == 'R' and cur[3] == id then state = 'running' end
    local delay = math.min(tonumber(ARGV[3]) * (2 ^ math.min(resc, 30)), tonumber(ARGV[4]))
    redis.call('ZADD', KEYS[1], now + delay, id)
    redis.call('HSET', rk, 'resc', resc + 1, 'state', 'queued')
    table.insert(out, {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], state, tostring(resc)})
  end
end
return out
