-- Record a batch of transitions of one shard (the LEGAL, TERMINAL and ECHO tables
-- are prepended, generated from celery_reliable/states/machine.py, and STATE_OF_CODE
-- from celery_reliable/states/stores/redis.py).  The rules are those of
-- celery_reliable/states/ordering.py: each task's history in happened-order, judged
-- whole; see there.
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

-- The history of one task in happened-order (celery_reliable/states/ordering.py):
-- replay generation, attempt, rank (REPLAYED, PENDING, the rest), time; ties by
-- member (unique).
local function in_order(list)
  table.sort(list, function(a, b)
    if a.at ~= b.at then return a.at < b.at end
    return a.m < b.m
  end)
  local generation, published = 0, {}
  for _, e in ipairs(list) do
    e.rank = 2
    if e.state == 'REPLAYED' then
      generation, e.rank = generation + 1, 0
    elseif e.state == 'PENDING' and not published[generation .. ':' .. e.attempt] then
      published[generation .. ':' .. e.attempt] = true
      e.rank = 1
    end
    e.g = generation
  end
  table.sort(list, function(a, b)
    if a.g ~= b.g then return a.g < b.g end
    if a.attempt ~= b.attempt then return a.attempt < b.attempt end
    if a.rank ~= b.rank then return a.rank < b.rank end
    if a.at ~= b.at then return a.at < b.at end
    return a.m < b.m
  end)
  return list
end

-- Walk the first `upto` entries through the lifecycle: the index of the one that set
-- the current state (nil: none), the indexes of the illegal ones, the state reached.
-- After a terminal state a repeat of the task (PENDING; RECEIVED then DEDUPLICATED)
-- is an echo: kept, never a move.
local function settle(list, upto)
  local state, echo, current, illegal = '', '', nil, {}
  for k = 1, upto do
    local s = list[k].state
    if TERMINAL[state] and ECHO[echo][s] then
      echo = s == 'DEDUPLICATED' and '' or s
    elseif (TERMINAL[state] and echo == 'RECEIVED') or not legal(state, s) then
      illegal[#illegal + 1] = k
    else
      state, current, echo = s, k, ''
    end
  end
  return current, illegal, state
end

-- A task's new rows that all simply follow its current state (each newer, an attempt
-- no lower, legal after the one before, the task not finished): appended without
-- reading its history.  False: not written, judge them with the history.
local function appended(task, idxs)
  local cur = redis.call('HMGET', base .. 'c:' .. task, 'state', 'since', 'w0', 'attempt')
  local previous, w0 = cur[1] or '', cur[3] ~= '' and cur[3]
  if TERMINAL[previous] then return false end
  local state, at, attempt, key = previous, -1, 0, rows[idxs[1]][4]
  if previous ~= '' then at, attempt = tonumber(cur[2]), tonumber(cur[4] or 1) end
  local scored = {}
  for _, i in ipairs(idxs) do
    local row = rows[i]
    local row_at, row_attempt = tonumber(row[8]), tonumber(row[6])
    if row[4] ~= key or row_at <= at or row_attempt < attempt or not legal(state, row[5])
        or (row[5] == 'PENDING' and state ~= '' and row_attempt == attempt) then
      return false
    end
    state, at, attempt = row[5], row_at, row_attempt
    scored[#scored + 1] = row[8]
    scored[#scored + 1] = member(row, w0)
    w0 = first_worker(w0, row)
  end
  local hist_key = base .. 'h:' .. task
  redis.call('ZADD', hist_key, unpack(scored))
  redis.call('PEXPIRE', hist_key, ttl)
  local row = rows[idxs[#idxs]]
  set_current(task, previous, row[5], row[8], row[3], row[4], row[6], row[7], w0)
  for _, i in ipairs(idxs) do count(rows[i][9], rows[i][5], rows[i][3]) end
  written = written + #idxs
  return true
end

local function copy(list)
  local out = {}
  for k, e in ipairs(list) do out[k] = e end
  return out
end

-- A task's new rows fitted into its whole history (see ordering.admit): all of them
-- when the merged history is legal; else the first illegal new one is refused (or the
-- new one just before a recorded one it made illegal), until the rest is legal.
local function fitted(task, idxs)
  local cur_key, hist_key = base .. 'c:' .. task, base .. 'h:' .. task
  local cur = redis.call('HMGET', cur_key, 'state', 'w0')
  local previous, w0 = cur[1] or '', cur[2] ~= '' and cur[2]
  local old_w0 = w0
  local raw = redis.call('ZRANGE', hist_key, 0, -1, 'WITHSCORES')
  local entries, members = {}, {}
  for j = 1, #raw, 2 do
    local code, attempt = string.match(raw[j], '^([^|]*)|([^|]*)|')
    entries[#entries + 1] = {m = raw[j], at = tonumber(raw[j + 1]),
                             state = STATE_OF_CODE[code], attempt = tonumber(attempt)}
    members[raw[j]] = true
  end
  local accepted = {}
  for _, i in ipairs(idxs) do
    local row = rows[i]
    local m = member(row, w0)
    if members[m] then
      duplicates = duplicates + 1
    else
      members[m] = true
      accepted[#accepted + 1] = {m = m, at = tonumber(row[8]), state = row[5],
                                 attempt = tonumber(row[6]), i = i}
      w0 = first_worker(w0, row)
    end
  end
  if #accepted == 0 then return end
  local old_illegal = {}
  local base_order = in_order(copy(entries))
  local _, illegal_before = settle(base_order, #base_order)
  for _, k in ipairs(illegal_before) do old_illegal[base_order[k].m] = true end
  local merged, current
  while true do
    merged = copy(entries)
    for _, e in ipairs(accepted) do merged[#merged + 1] = e end
    in_order(merged)
    local illegal
    current, illegal = settle(merged, #merged)
    local bad
    for _, k in ipairs(illegal) do
      if not old_illegal[merged[k].m] then bad = k; break end
    end
    if bad == nil then break end
    if merged[bad].i == nil then
      local k = bad - 1
      while k >= 1 and merged[k].i == nil do k = k - 1 end
      bad = k
    end
    local culprit = merged[bad]
    local _, _, before = settle(merged, bad - 1)
    table.insert(rejected, culprit.i - 1)
    table.insert(rejected, before)
    table.insert(rejected, merged[bad + 1] and merged[bad + 1].state or '')
    for k, e in ipairs(accepted) do
      if e == culprit then table.remove(accepted, k); break end
    end
  end
  if #accepted == 0 then return end
  for _, e in ipairs(accepted) do
    local row = rows[e.i]
    redis.call('ZADD', hist_key, row[8], e.m)
    count(row[9], row[5], row[3])
  end
  redis.call('PEXPIRE', hist_key, ttl)
  written = written + #accepted
  local now = current and merged[current]
  if now and now.i then
    local row = rows[now.i]
    set_current(task, previous, row[5], row[8], row[3], row[4], row[6], row[7], w0)
  else
    if w0 ~= old_w0 then redis.call('HSET', cur_key, 'w0', w0) end
    redis.call('PEXPIRE', cur_key, ttl)
  end
end

-- A batch's rows per task, tasks in the order they first appear.
local tasks, of_task = {}, {}
for i, row in ipairs(rows) do
  local idxs = of_task[row[2]]
  if idxs == nil then
    idxs = {}
    of_task[row[2]] = idxs
    tasks[#tasks + 1] = row[2]
  end
  idxs[#idxs + 1] = i
end
for _, task in ipairs(tasks) do
  if not appended(task, of_task[task]) then fitted(task, of_task[task]) end
end
for _, counts in ipairs(counted_order) do
  for field, n in pairs(counted[counts]) do redis.call('HINCRBY', counts, field, n) end
  redis.call('PEXPIRE', counts, ttl)
end
return {written, duplicates, unpack(rejected)}
