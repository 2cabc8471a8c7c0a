-- KEYS: state, due; ARGV: owner, task_id, lease_ms
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
local until_ms = now_ms() + tonumber(ARGV[3])
cur[5] = until_ms
redis.call('SET', KEYS[1], cjson.encode(cur), 'KEEPTTL')
redis.call('ZADD', KEYS[2], 'XX', until_ms, ARGV[2])
return 1
