-- Take the dead letters of some task ids off a Redis list, keeping the rest in order.
-- KEYS: the DLQ list; ARGV: how many messages to look at, the task-id header's name,
-- then the task ids to drop.
-- Each message is popped from the tail and pushed back at the head unless it goes:
-- a full rotation over the list's length leaves the others as they were.
local drop = {}
for i = 3, #ARGV do drop[ARGV[i]] = true end
local removed = 0
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  local ok, msg = pcall(cjson.decode, item)
  local id = nil
  if ok and type(msg) == 'table' and type(msg.headers) == 'table' then
    id = msg.headers[ARGV[2]]
  end
  if id and drop[id] then removed = removed + 1 else redis.call('LPUSH', KEYS[1], item) end
end
return removed
