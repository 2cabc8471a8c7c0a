-- KEYS: state, due, lease clock; ARGV: owner, task_id, lease_ms, outage_ms
local now = lease_now(KEYS[3], ARGV[4], true)
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
local until_ms = now + tonumber(ARGV[3])
cur[5] = until_ms
redis.call('SET', KEYS[1], cjson.encode(cur), 'KEEPTTL')
-- Only later: a retry republished by the body (due after its countdown) must not be
-- pulled back to the lease's end, or the rescuer sends a second copy.
local due = redis.call('ZSCORE', KEYS[2], ARGV[2])
if due and tonumber(due) < until_ms then redis.call('ZADD', KEYS[2], until_ms, ARGV[2]) end
return 1
