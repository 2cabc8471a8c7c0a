-- KEYS: the time index of dead letters, then dead letter hashes
-- ARGV: index prefix, then the task ids of those hashes
local idx = ARGV[1]
local n = 0
for i = 2, #KEYS do
  local id = ARGV[i]
  local v = redis.call('HMGET', KEYS[i], 'name', 'reason', 'exc', 'q')
  if redis.call('DEL', KEYS[i]) == 1 then n = n + 1 end
  local kinds = {'n', 'r', 'e', 'q'}
  for k = 1, 4 do
    if v[k] and v[k] ~= '' then redis.call('ZREM', idx .. kinds[k] .. ':' .. v[k], id) end
  end
  redis.call('ZREM', KEYS[1], id)
end
return n
