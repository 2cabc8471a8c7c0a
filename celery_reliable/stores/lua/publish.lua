-- KEYS: state, record, due, lease clock
-- ARGV: task_id, fingerprint, dedupe, deadline_in_ms, stale_ttl_ms,
--       name, key, body, content_type, content_encoding, options, outage_ms
local cur = get_state(KEYS[1])
if cur and ARGV[3] == '1' and cur[1] ~= 'X' then
  if not same_args(cur, ARGV[2]) then return {'conflict', cur[3]} end
  if cur[1] == 'D' then return {'done', cur[3]} end
  return {'in_flight', cur[3]}
end
-- A done key is never downgraded: a copy published without dedupe is skipped by its claim.
if (not cur) or cur[1] == 'X' then
  set_state(KEYS[1], {'Q', ARGV[2], ARGV[1], '', 0, 0}, ARGV[5])
elseif cur[1] == 'Q' and cur[3] == ARGV[1] and cur[2] ~= ARGV[2] then
  -- this task published again with other arguments (a corrected replay): they are its own
  set_state(KEYS[1], {'Q', ARGV[2], ARGV[1], '', 0, cur[6]}, ARGV[5])
end
redis.call('HSET', KEYS[2], 'name', ARGV[6], 'key', ARGV[7], 'fp', ARGV[2], 'body', ARGV[8],
  'ctype', ARGV[9], 'cenc', ARGV[10], 'opts', ARGV[11], 'pub', now_ms(), 'state', 'queued',
  'resc', 0)
redis.call('ZADD', KEYS[3], lease_now(KEYS[4], ARGV[12], true) + tonumber(ARGV[4]), ARGV[1])
return {'new', ARGV[1]}
