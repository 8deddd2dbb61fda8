-- reservations.lua: the units a worker was handed, in order, without those stolen from it before
-- it started them (read only; runs without _lib.lua).
--
-- Key schema: see _lib.lua; every key is "conveyor:{<build>}:<name>".
-- KEYS[1]  reservations:<worker>  list  unit, attempt, unit, attempt, ...
-- KEYS[2]  stolen                 hash  "<victim>\0<unit>\0<attempt>" -> entries stolen
-- ARGV[1]  worker
-- Returns {unit, attempt, ...}: the list, less the first n entries of each stolen (unit, attempt).

local flat = redis.call('LRANGE', KEYS[1], 0, -1)
local to_skip, kept = {}, {}
for i = 1, #flat, 2 do
  local entry = ARGV[1] .. '\0' .. flat[i] .. '\0' .. flat[i + 1]
  if to_skip[entry] == nil then
    to_skip[entry] = tonumber(redis.call('HGET', KEYS[2], entry)) or 0
  end
  if to_skip[entry] > 0 then
    to_skip[entry] = to_skip[entry] - 1
  else
    kept[#kept + 1] = flat[i]
    kept[#kept + 1] = flat[i + 1]
  end
end
return kept
