-- Record a batch of transitions of one shard (the LEGAL and TERMINAL tables are
-- prepended, generated from celery_reliable/states/machine.py, and STATE_OF_CODE
-- from celery_reliable/states/stores/redis.py).
-- KEYS[1]: the shard's prefix "{p:st:S}:" (its hash tag routes the script)
-- ARGV[1]: retention in ms; ARGV[2]: a JSON list of transitions, each a list of
--   9 strings: history entry, task_id, name, key, state, attempt, worker, at_us,
--   minute.  The entry (redis.py's _entry) is the sorted set member but for its
--   worker part, added here: nothing when the worker is the task's first worker
--   (field w0 of its current-state hash), '=' and the name when it is another
--   one, '=' alone when there is none.
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
  return STATE_OF_CODE[string.match(entries[1], '^[^|]*')]
end

local rows = cjson.decode(ARGV[2])
-- Counts are added up here and written once per script: a batch is mostly one
-- task name in one minute, three transitions a task.
local counted, counted_order = {}, {}

local function count(minute, state, name)
  local counts = base .. 'n:' .. minute
  local fields = counted[counts]
  if fields == nil then
    fields = {}
    counted[counts] = fields
    counted_order[#counted_order + 1] = counts
  end
  local field = state .. '\t' .. name
  fields[field] = (fields[field] or 0) + 1
end

-- The history member of a row, given the task's first worker (false: none yet).
local function member(row, w0)
  local worker = row[7]
  if worker == w0 or (not w0 and worker ~= '') then return row[1] end
  return row[1] .. '=' .. worker
end

-- The task's first worker after `row` (set the first time a row names one).
local function first_worker(w0, row)
  if not w0 and row[7] ~= '' then return row[7] end
  return w0
end

-- The task is now in `state` since `at` (not late): move it in the indexes.  Only
-- states a task can stay stuck in are indexed: a finished task's keys expire by
-- themselves, and an index of every finished task would be the store's largest key.
local function set_current(task, previous, state, at, name, key, attempt, worker, w0)
  local cur_key = base .. 'c:' .. task
  if previous ~= '' and not TERMINAL[previous] then
    redis.call('ZREM', base .. 'i:' .. previous, task)
  end
  if not TERMINAL[state] then redis.call('ZADD', base .. 'i:' .. state, at, task) end
  redis.call('HSET', cur_key, 'state', state, 'since', at, 'name', name, 'key', key,
             'attempt', attempt, 'worker', worker, 'w0', w0 or '')
  redis.call('PEXPIRE', cur_key, ttl)
  local by_key = base .. 'k:' .. key
  redis.call('ZADD', by_key, at, task)
  if previous == '' then
    -- the set grows only here: drop the tasks of the key that expired meanwhile
    -- (their own keys are gone)
    local horizon = string.format('%.0f', tonumber(at) - tonumber(ttl) * 1000)
    redis.call('ZREMRANGEBYSCORE', by_key, '-inf', '(' .. horizon)
  end
  redis.call('PEXPIRE', by_key, ttl)
end

-- One transition at a time: duplicates skipped, late ones fitted in by time.
local function one(i)
  local row = rows[i]
  local _, task, name, key, state, attempt, worker, at, minute = unpack(row)
  local cur_key, hist_key = base .. 'c:' .. task, base .. 'h:' .. task
  local cur = redis.call('HMGET', cur_key, 'state', 'since', 'w0')
  local w0 = cur[3] ~= '' and cur[3]
  local m = member(row, w0)
  if redis.call('ZSCORE', hist_key, m) then
    duplicates = duplicates + 1
    return
  end
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
  if not ok then
    table.insert(rejected, i - 1)
    table.insert(rejected, before)
    table.insert(rejected, after)
    return
  end
  written = written + 1
  redis.call('ZADD', hist_key, at, m)
  redis.call('PEXPIRE', hist_key, ttl)
  local now_w0 = first_worker(w0, row)
  if late then
    if now_w0 ~= w0 then redis.call('HSET', cur_key, 'w0', now_w0) end
    redis.call('PEXPIRE', cur_key, ttl)
  else
    set_current(task, previous, state, at, name, key, attempt, worker, now_w0)
  end
  count(minute, state, name)
end

-- Consecutive transitions of one task (a worker's received, started, succeeded
-- usually flush together): written at once when none is a duplicate or late and
-- each follows the one before legally; else one at a time.  False: not written.
local function together(first, last)
  local task, key = rows[first][2], rows[first][4]
  local hist_key = base .. 'h:' .. task
  local cur = redis.call('HMGET', base .. 'c:' .. task, 'state', 'since', 'w0')
  local previous, w0 = cur[1] or '', cur[3] ~= '' and cur[3]
  -- Every recorded transition of the task is at or before `since`: rows after it
  -- cannot be duplicates, rows at it may be, rows before it are late.
  local newer = previous == '' or tonumber(rows[first][8]) > tonumber(cur[2])
  if not newer and tonumber(rows[first][8]) < tonumber(cur[2]) then return false end
  local members, scored, state = {}, {}, previous
  for i = first, last do
    local row = rows[i]
    if row[4] ~= key or not legal(state, row[5]) then return false end
    if i > first and tonumber(row[8]) < tonumber(rows[i - 1][8]) then return false end
    state = row[5]
    members[#members + 1] = member(row, w0)
    w0 = first_worker(w0, row)
    scored[#scored + 1] = row[8]
    scored[#scored + 1] = members[#members]
  end
  if not newer then
    for _, score in ipairs(redis.call('ZMSCORE', hist_key, unpack(members))) do
      if score then return false end
    end
  end
  redis.call('ZADD', hist_key, unpack(scored))
  redis.call('PEXPIRE', hist_key, ttl)
  local row = rows[last]
  set_current(task, previous, row[5], row[8], row[3], row[4], row[6], row[7], w0)
  for i = first, last do count(rows[i][9], rows[i][5], rows[i][3]) end
  written = written + (last - first + 1)
  return true
end

local first = 1
while first <= #rows do
  local last = first
  while last < #rows and rows[last + 1][2] == rows[first][2] do last = last + 1 end
  if last == first or not together(first, last) then
    for i = first, last do one(i) end
  end
  first = last + 1
end
for _, counts in ipairs(counted_order) do
  for field, n in pairs(counted[counts]) do redis.call('HINCRBY', counts, field, n) end
  redis.call('PEXPIRE', counts, ttl)
end
return {written, duplicates, unpack(rejected)}
