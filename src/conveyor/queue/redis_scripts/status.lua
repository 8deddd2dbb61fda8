-- status.lua: the build's counts at one instant (read only; runs without _lib.lua).
--
-- Key schema: see _lib.lua; every key is "conveyor:{<build>}:<name>".
-- KEYS[1]  meta     hash  (total, stop_reason)
-- KEYS[2]  pending  zset
-- KEYS[3]  leases   zset
-- KEYS[4]  workers  zset  worker -> joined_at
-- Returns {} when the build is not populated, else
-- {total, pending, leased, stop_reason or nil, {worker, ...} in join order}.

local meta = redis.call('HMGET', KEYS[1], 'total', 'stop_reason')
if not meta[1] then
  return {}
end
return {
  tonumber(meta[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  meta[2],
  redis.call('ZRANGE', KEYS[4], 0, -1),
}
