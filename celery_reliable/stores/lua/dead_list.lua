-- KEYS: an index of dead letters (by time, or by name/reason/exception/queue)
-- ARGV: dead letter hash prefix, max score, cursor task id ('' for none), min score,
--       limit, budget (entries examined at most), name, exc, reason, queue,
--       text (lowercase), replayed ('', '1' or '0')
-- Returns {entries (id, fields, id, fields, ...), last examined score, its id, done}.
-- The budget keeps one call short on a large index: the caller goes on from the
-- last examined entry.
local prefix, max, cid = ARGV[1], ARGV[2], ARGV[3]
local limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local want = {name = ARGV[7], exc = ARGV[8], reason = ARGV[9], q = ARGV[10]}
local text, replayed = ARGV[11], ARGV[12]
local function matches(h)
  for field, value in pairs(want) do
    if value ~= '' and h[field] ~= value then return false end
  end
  if text ~= '' and not string.find(string.lower(h.error or ''), text, 1, true) then
    return false
  end
  if replayed ~= '' then
    local done = h.repat ~= nil and h.repat ~= '' and tonumber(h.repat) >= tonumber(h.dead)
    if (replayed == '1') ~= done then return false end
  end
  return true
end
local out, examined, offset = {}, 0, 0
local last_score, last_id = '', ''
local max_number = tonumber(max)
while #out < 2 * limit and examined < budget do
  local batch = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, ARGV[4], 'WITHSCORES', 'LIMIT',
    offset, 200)
  if #batch == 0 then return {out, last_score, last_id, 1} end
  for i = 1, #batch, 2 do
    local id, score = batch[i], batch[i + 1]
    offset = offset + 1
    if not (cid ~= '' and tonumber(score) == max_number and id >= cid) then
      examined = examined + 1
      last_score, last_id = score, id
      local flat = redis.call('HGETALL', prefix .. id)
      if #flat > 0 then
        local h = {}
        for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
        if matches(h) then
          out[#out + 1] = id
          out[#out + 1] = flat
          if #out >= 2 * limit then return {out, last_score, last_id, 0} end
        end
      end
      if examined >= budget then return {out, last_score, last_id, 0} end
    end
  end
end
return {out, last_score, last_id, 0}
