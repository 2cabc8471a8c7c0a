-- KEYS: state, lease clock (read only); ARGV: fingerprint, outage_ms
local cur = get_state(KEYS[1])
if (not cur) or cur[1] == 'Q' or cur[1] == 'X' then return {'new', ''} end
if not same_args(cur, ARGV[1]) then return {'conflict', cur[3]} end
if cur[1] == 'D' then return {'done', cur[3]} end
if tonumber(cur[5]) > lease_now(KEYS[2], ARGV[2], false) then return {'in_flight', cur[3]} end
return {'new', ''}
