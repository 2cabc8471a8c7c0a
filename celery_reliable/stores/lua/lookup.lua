-- KEYS: state; ARGV: fingerprint
local cur = get_state(KEYS[1])
if (not cur) or cur[1] == 'Q' or cur[1] == 'X' then return {'new', ''} end
if not same_args(cur, ARGV[1]) then return {'conflict', cur[3]} end
if cur[1] == 'D' then return {'done', cur[3]} end
if tonumber(cur[5]) > now_ms() then return {'in_flight', cur[3]} end
return {'new', ''}
