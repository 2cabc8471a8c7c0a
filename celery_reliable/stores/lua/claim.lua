-- KEYS: state, record, due (the record is only deleted here, when a copy is absorbed),
--       this task's dead letter, lease clock
-- ARGV: fingerprint, task_id, owner, lease_ms, max_lost, stale_ttl_ms, compact task_id
--       (how a done key keeps it), outage_ms
local now = lease_now(KEYS[5], ARGV[8], true)
local cur = get_state(KEYS[1])
local lost = 0
local status = 'claimed'
if (not cur) or (cur[1] == 'Q' and cur[3] == ARGV[2]) then
  -- Dead-lettering forgot the key: a copy of that task runs only after a replay.
  -- A stale copy that republished itself (deferred) left the key queued for it and
  -- a record the rescuer would bring back: both go (decisions.may_be_dead_letter).
  local dead = redis.call('HMGET', KEYS[4], 'dead', 'repat')
  if dead[1] and not (dead[2] and dead[2] ~= '' and tonumber(dead[2]) >= tonumber(dead[1])) then
    if cur then redis.call('DEL', KEYS[1]) end
    redis.call('DEL', KEYS[2])
    redis.call('ZREM', KEYS[3], ARGV[2])
    return {'dead_lettered', ARGV[2], '', 0, 0}
  end
end
if cur then
  if not same_args(cur, ARGV[1]) then
    -- this very task published again with other arguments (a corrected replay): stale
    if cur[3] == ARGV[2] or cur[3] == ARGV[7] then return {'superseded', ARGV[2], '', 0, 0} end
    return {'conflict', cur[3], '', 0, 0}
  end
  if cur[1] == 'D' then
    -- absorbed, with its record (also one a later publish of the done task's own id wrote)
    redis.call('DEL', KEYS[2])
    redis.call('ZREM', KEYS[3], ARGV[2])
    return {'done', cur[3], cur[4], 0, 0}
  end
  lost = tonumber(cur[6]) or 0
  if cur[1] == 'X' then return {'lost_too_often', cur[3], '', lost, 0} end
  -- the same owner is this very claim made again (its first reply was lost)
  if cur[1] == 'R' and cur[4] ~= ARGV[3] then
    local left = tonumber(cur[5]) - now
    if left > 0 then return {'busy', cur[3], '', lost, left} end
    lost = lost + 1
    status = 'taken_over'
    if lost >= tonumber(ARGV[5]) then
      -- stays dead so that stale copies still held by the broker are absorbed
      set_state(KEYS[1], {'X', ARGV[1], cur[3], '', 0, lost}, ARGV[6])
      return {'lost_too_often', cur[3], '', lost, 0}
    end
  end
end
local lease = tonumber(ARGV[4])
set_state(KEYS[1], {'R', ARGV[1], ARGV[2], ARGV[3], now + lease, lost}, ARGV[6])
-- The record (if persisted) is now due at the lease's end; its 'running' state is
-- read from the key, so the claim writes nothing else.
redis.call('ZADD', KEYS[3], 'XX', now + lease, ARGV[2])
return {status, ARGV[2], '', lost, 0}
