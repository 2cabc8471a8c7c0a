-- KEYS: state; ARGV: owner, task_id, requeued, stale_ttl_ms
local cur = get_state(KEYS[1])
if (not cur) or cur[1] ~= 'R' or cur[4] ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  set_state(KEYS[1], {'Q', cur[2], ARGV[2], '', 0, cur[6]}, ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 1
