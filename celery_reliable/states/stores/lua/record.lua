-- Record a batch of transitions of one shard (the LEGAL table is prepended,
-- generated from celery_reliable/states/machine.py).
-- KEYS[1]: the shard's prefix "{p:st:S}:" (its hash tag routes the script)
-- ARGV[1]: retention in ms; ARGV[2]: a JSON list of transitions, each a list of
--   12 strings: id, task_id, name, key, state, attempt, worker, at_us, minute,
--   error_type, error_message, detail ('' for none)
-- Returns {written, duplicates, then index (0-based), before, after per rejected one}.
local unpack = unpack or table.unpack
local base, ttl = KEYS[1], ARGV[1]
local written, duplicates, rejected = 0, 0, {}

local function legal(from, to)
  local row = LEGAL[from]
  return row ~= nil and row[to] == true
end
local function state_of(entries)
  if entries[1] == nil then return '' end
  return cjson.decode(entries[1])[2]
end

for i, row in ipairs(cjson.decode(ARGV[2])) do
  local id, task, name, key, state, attempt, worker, at, minute, etype, emsg, detail =
    unpack(row)
  local cur_key, hist_key = base .. 'c:' .. task, base .. 'h:' .. task
  local member = cjson.encode({id, state, attempt, worker, etype, emsg, detail, name, key})
  if redis.call('ZSCORE', hist_key, member) then
    duplicates = duplicates + 1
  else
    local cur = redis.call('HMGET', cur_key, 'state', 'since')
    local previous = cur[1] or ''
    local late = previous ~= '' and tonumber(at) < tonumber(cur[2])
    local ok, before, after
    if late then
      -- written elsewhere before the current state, flushed after: fit it in by time
      before = state_of(redis.call('ZREVRANGEBYSCORE', hist_key, '(' .. at, '-inf', 'LIMIT', 0, 1))
      after = state_of(redis.call('ZRANGEBYSCORE', hist_key, '(' .. at, '+inf', 'LIMIT', 0, 1))
      ok = legal(before, state) and (after == '' or legal(state, after))
    else
      before, after = previous, ''
      ok = legal(previous, state)
    end
    if ok then
      written = written + 1
      redis.call('ZADD', hist_key, at, member)
      redis.call('PEXPIRE', hist_key, ttl)
      if not late then
        if previous ~= '' then redis.call('ZREM', base .. 'i:' .. previous, task) end
        redis.call('ZADD', base .. 'i:' .. state, at, task)
        redis.call('HSET', cur_key, 'state', state, 'since', at, 'name', name, 'key', key,
                   'attempt', attempt, 'worker', worker)
        local by_key = base .. 'k:' .. key
        redis.call('ZADD', by_key, at, task)
        -- tasks of the key that expired meanwhile (their own keys are gone)
        local horizon = string.format('%.0f', tonumber(at) - tonumber(ttl) * 1000)
        redis.call('ZREMRANGEBYSCORE', by_key, '-inf', '(' .. horizon)
        redis.call('PEXPIRE', by_key, ttl)
      end
      redis.call('PEXPIRE', cur_key, ttl)
      local counts = base .. 'n:' .. minute
      redis.call('HINCRBY', counts, state .. '\t' .. name, 1)
      redis.call('PEXPIRE', counts, ttl)
    else
      table.insert(rejected, i - 1)
      table.insert(rejected, before)
      table.insert(rejected, after)
    end
  end
end
return {written, duplicates, unpack(rejected)}
