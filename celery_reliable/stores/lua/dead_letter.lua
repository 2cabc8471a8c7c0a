-- KEYS: record, due, dead, state, dead letter
-- ARGV: task_id, key, reason, error, index prefix, exc_type, traceback, attempts,
--       worker, queue, dead-at (ms; '' for now), then the fallback record's fields as
--       name/value pairs
-- The dead letter is its own hash ({tag}:d:<task_id>), indexed by time in KEYS[3]
-- and by name, reason, exception type and queue in '<prefix>n:<name>' etc.
-- A second dead letter of one task updates its entry and keeps its replay count.
local now = ARGV[11] ~= '' and tonumber(ARGV[11]) or now_ms()
local id, idx = ARGV[1], ARGV[5]
local function index(kind, value, score)
  if value and value ~= '' then
    if score then
      redis.call('ZADD', idx .. kind .. ':' .. value, score, id)
    else
      redis.call('ZREM', idx .. kind .. ':' .. value, id)
    end
  end
end
local old = redis.call('HMGET', KEYS[5], 'name', 'reason', 'exc', 'q')
index('n', old[1]); index('r', old[2]); index('e', old[3]); index('q', old[4])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[5], unpack(redis.call('HGETALL', KEYS[1])))
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[5]) == 0 then
  if #ARGV > 11 then
    redis.call('HSET', KEYS[5], unpack(ARGV, 12))
  end
  redis.call('HSET', KEYS[5], 'key', ARGV[2])
end
local queue = ARGV[10]
if queue == '' then
  local ok, opts = pcall(cjson.decode, redis.call('HGET', KEYS[5], 'opts') or '{}')
  if ok and type(opts) == 'table' and type(opts.queue) == 'string' then queue = opts.queue end
end
redis.call('HSET', KEYS[5], 'state', 'dead', 'reason', ARGV[3], 'error', ARGV[4], 'dead', now,
  'exc', ARGV[6], 'tb', ARGV[7], 'att', ARGV[8], 'wrk', ARGV[9], 'q', queue)
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], now, id)
local name = redis.call('HGET', KEYS[5], 'name')
index('n', name, now); index('r', ARGV[3], now); index('e', ARGV[6], now); index('q', queue, now)
-- a key still queued or running for this task would answer "in flight" forever
local cur = get_state(KEYS[4])
if cur and cur[3] == id and (cur[1] == 'Q' or cur[1] == 'R') then
  redis.call('DEL', KEYS[4])
end
return 1
