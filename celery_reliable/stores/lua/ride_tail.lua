-- Appended to a store script that carries a Ride (stores/base.py): the script's own
-- body was wrapped as main(), and the rider's Lua defines ride(key, args).
-- KEYS[#KEYS]: the rider's key.  ARGV ends with the rider's arguments, then `when`
-- (run the rider only when main's status is this; '' always), then how many
-- arguments the rider has.  Returns {main's reply} or {main's reply, the rider's},
-- the rider's being its error text when it failed: main's writes stand either way.
local reply = main()
local n = tonumber(ARGV[#ARGV])
local when = ARGV[#ARGV - 1]
if when ~= '' and not (type(reply) == 'table' and reply[1] == when) then return {reply} end
local args = {}
for i = #ARGV - 1 - n, #ARGV - 2 do args[#args + 1] = ARGV[i] end
local ok, rode = pcall(ride, KEYS[#KEYS], args)
if not ok then
  if type(rode) == 'table' then rode = rode.err end
  rode = 'rider failed: ' .. tostring(rode)
end
return {reply, rode}
