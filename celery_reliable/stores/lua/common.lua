-- Shared by every script (prepended when loaded).
-- Key states queued/running/dead are cjson arrays:
--   {state, fingerprint, task_id, owner, lease_until_ms, lost}   state: Q, R or X
-- A done key, kept for the whole retention window, is packed into one short
-- string so that Redis stores it inline as an embstr (44 bytes or less for a
-- UUID task id and a None result):
--   'E' .. fingerprint (16 hex: 64 bits) .. compact_task_id .. '\t' .. result
-- where the result is '' for None, '~' when it was not kept, else its JSON, and the
-- task id is '=' when it is the key itself (the key of a publish: 32 bytes saved).
-- Done keys written before that kept 8 characters ('D' .. fingerprint[1..8] ..);
-- they are still read, and compared on those 8 characters, until they expire.
-- get_state returns either as {'D', fingerprint, compact_task_id, result}.
local DONE_FINGERPRINT = {D = 8, E = 16}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function get_state(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local n = DONE_FINGERPRINT[string.sub(raw, 1, 1)]
  if n then
    local rest = string.sub(raw, n + 2)
    local tab = string.find(rest, '\t', 1, true)
    local task_id = string.sub(rest, 1, tab - 1)
    if task_id == '=' then
      task_id = string.sub(key, select(2, string.find(key, '}:k:', 1, true)) + 1)
    end
    return {'D', string.sub(raw, 2, n + 1), task_id, string.sub(rest, tab + 1)}
  end
  return cjson.decode(raw)
end
local function same_args(cur, fingerprint)
  if cur[1] == 'D' then return cur[2] == string.sub(fingerprint, 1, #cur[2]) end
  return cur[2] == fingerprint
end
local function set_state(key, value, ttl_ms)
  redis.call('SET', key, cjson.encode(value), 'PX', ttl_ms)
end
-- The lease clock (stores/base.py): leases and rescue deadlines are measured on
-- wall time minus every silence longer than outage_ms (no operation at all, as
-- while the store was down), so nobody's lease lapses while nobody could renew it.
-- clock_key: hash {s = last seen (ms), p = paused so far (ms)}; written at most
-- every refresh (stores/decisions.py lease_clock, the same rules).
local function lease_now(clock_key, outage_ms, write)
  local wall = now_ms()
  outage_ms = tonumber(outage_ms)
  local c = redis.call('HMGET', clock_key, 's', 'p')
  local seen, paused = tonumber(c[1]), tonumber(c[2]) or 0
  if not seen then
    if write then redis.call('HSET', clock_key, 's', wall, 'p', 0) end
    return wall
  end
  local silence = wall - seen
  if silence > outage_ms then
    paused = paused + silence
    if write then redis.call('HSET', clock_key, 's', wall, 'p', paused) end
  elseif write and silence >= math.min(1000, outage_ms / 4) then
    redis.call('HSET', clock_key, 's', wall)
  end
  return wall - paused
end
