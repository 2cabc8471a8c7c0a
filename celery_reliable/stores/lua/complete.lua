-- KEYS: state, record, due
-- ARGV: owner, fingerprint (16 hex), compact task id, result ('' None, '~' not kept),
--       retention_ms, task_id
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'E' .. ARGV[2] .. ARGV[3] .. '\t' .. ARGV[4], 'PX', ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[6])
return 1
