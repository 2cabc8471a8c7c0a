-- Shared by every script (prepended when loaded). Key states are cjson arrays:
--   {state, fingerprint, task_id, owner_or_result, lease_until_ms, lost}
-- with one-letter states to keep a remembered key small:
--   Q queued, R running, D done (4th field: result JSON or ''), X dead.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function get_state(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function set_state(key, value, ttl_ms)
  redis.call('SET', key, cjson.encode(value), 'PX', ttl_ms)
end
