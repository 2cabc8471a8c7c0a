-- KEYS: state, record, due; ARGV: owner, fingerprint, task_id, result, retention_ms
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
set_state(KEYS[1], {'D', ARGV[2], ARGV[3], ARGV[4]}, ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[3])
return 1
