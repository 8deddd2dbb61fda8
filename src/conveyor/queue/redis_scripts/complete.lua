-- complete.lua: store final results; the first result of a unit wins, later ones are rejected.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now      caller's clock, seconds
-- ARGV[2]  ttl_ms   key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4], ARGV[5], ...  unit, result (JSON, the data of its `result` event), unit, result, ...
-- Returns one 1 (stored) or 0 (late duplicate) per result. Errors: BUILD_LOST when the build is
-- gone; "NOT_IN_BUILD <i>" when the i-th result (from 0) names a unit outside the manifest, in
-- which case nothing is written.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[3]
local FIRST = 4
for i = FIRST, #ARGV, 2 do
  if redis.call('HEXISTS', ATTEMPTS, ARGV[i]) == 0 then
    return redis.error_reply('NOT_IN_BUILD ' .. ((i - FIRST) / 2))
  end
end

local accepted = {}
for i = FIRST, #ARGV, 2 do
  local unit = ARGV[i]
  -- Leased or still pending (its lease expired and nobody took it yet): this result is first.
  local was_open = redis.call('ZREM', LEASES, unit) + redis.call('ZREM', PENDING, unit)
  if was_open > 0 then
    drop_lease(unit)
    emit('result', worker, unit, ARGV[i + 1])
    accepted[#accepted + 1] = 1
  else
    -- Name the late result's own attempt when its payload says which; else the latest one.
    local attempt = number_or_zero(redis.call('HGET', ATTEMPTS, unit))
    local ok, late = pcall(cjson.decode, ARGV[i + 1])
    if ok and type(late) == 'table' and type(late.attempt) == 'number' then
      attempt = late.attempt
    end
    emit('duplicate_rejected', worker, unit, cjson.encode({attempt = attempt}))
    accepted[#accepted + 1] = 0
  end
end

maybe_finish()
touch()
return accepted
