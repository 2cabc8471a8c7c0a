-- KEYS: dead letter hashes; ARGV: force ('1' or '0'), then their task ids
-- Marks each entry replayed unless it already was since it was dead-lettered.
local now = now_ms()
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'dead', 'repat')
  if v[1] then
    local replayed = v[2] and v[2] ~= '' and tonumber(v[2]) >= tonumber(v[1])
    if ARGV[1] == '1' or not replayed then
      redis.call('HINCRBY', key, 'rep', 1)
      redis.call('HSET', key, 'repat', now)
      out[#out + 1] = ARGV[i + 1]
    end
  end
end
return out
