-- Forget the tasks of one shard whose current state is older than a time.
-- KEYS[1]: the shard's prefix "{p:st:S}:"
-- ARGV: before_us, limit, then the state names whose indexes to look in.
-- History and current state also expire by themselves (TTL = retention); this
-- keeps the state and key indexes from collecting the ids of expired tasks.
local base, before, left = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local pruned = 0
for s = 3, #ARGV do
  if left <= 0 then break end
  local index = base .. 'i:' .. ARGV[s]
  local tasks = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[1], 'LIMIT', 0, left)
  for _, task in ipairs(tasks) do
    local cur_key = base .. 'c:' .. task
    local cur = redis.call('HMGET', cur_key, 'state', 'since', 'key')
    if cur[1] == ARGV[s] and tonumber(cur[2]) < before then
      redis.call('ZREM', base .. 'k:' .. cur[3], task)
      redis.call('DEL', cur_key, base .. 'h:' .. task)
    end
    -- otherwise expired already, or the id was recorded again since: only the entry goes
    redis.call('ZREM', index, task)
  end
  pruned = pruned + #tasks
  left = left - #tasks
end
return pruned
