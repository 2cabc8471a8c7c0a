-- KEYS: state, record, due
-- ARGV: owner, fingerprint (16 hex), compact task id ('=': the key itself), result
--       ('' None, '~' not kept), retention_ms, task_id
-- PSETEX, not SET ... PX: Redis builds a script's arguments from a per-position cache of
-- earlier arguments and keeps a reused one's allocation; at position 3 the done value
-- lands in a smaller one (bench/memory_per_key.py: 16 bytes less per key of a publish).
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[5], 'E' .. ARGV[2] .. ARGV[3] .. '\t' .. ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[6])
return 1
