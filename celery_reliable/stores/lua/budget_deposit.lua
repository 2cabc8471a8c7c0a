-- KEYS: none (built from ARGV[1], all under the scope's hash tag)
-- ARGV: key base "{prefix:budget:scope}:", first attempts, window seconds
local second = math.floor(now_ms() / 1000)
local fk = ARGV[1] .. 'f:' .. second
redis.call('INCRBY', fk, tonumber(ARGV[2]))
redis.call('EXPIRE', fk, tonumber(ARGV[3]) + 2)
return 1
