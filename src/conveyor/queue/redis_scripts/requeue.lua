-- requeue.lua: send a failed attempt to the back of the queue for another try, within two
-- budgets: max_requeues per unit, and ceil(total * tolerance) for the whole build (a negative
-- tolerance means no build-wide cap). Past either budget the caller completes the unit instead.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- KEYS[17]     conveyor:{<build>}:requeues  hash  unit -> times it was requeued (absent: 0)
--              The build-wide count is the field `requeues` of meta (absent: 0).
-- ARGV[1]  now           caller's clock, seconds
-- ARGV[2]  ttl_ms        key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  unit
-- ARGV[5]  payload       JSON object, the data of the `requeued` event (spliced in verbatim)
-- ARGV[6]  rejected      JSON object, the data of `duplicate_rejected` when the unit is done
-- ARGV[7]  max_requeues  requeues allowed per unit
-- ARGV[8]  tolerance     share of total allowed build-wide; negative: no build-wide cap
-- Returns 'requeued', 'refused' (a budget is spent; nothing written) or 'done' (the unit already
-- has its final result; a duplicate_rejected event is written). Errors: BUILD_LOST when the build
-- is gone; "NOT_IN_BUILD 0" when the unit is not in the manifest (nothing is written).

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local REQUEUES = KEYS[FIRST_EXTRA_KEY]
local worker, unit, payload, rejected = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_requeues, tolerance = tonumber(ARGV[7]), tonumber(ARGV[8])

if redis.call('HEXISTS', ATTEMPTS, unit) == 0 then
  return redis.error_reply('NOT_IN_BUILD 0')
end

local leased = redis.call('ZSCORE', LEASES, unit)
if not leased and not redis.call('ZSCORE', PENDING, unit) then
  emit('duplicate_rejected', worker, unit, rejected)
  touch()
  return 'done'
end

local total = tonumber(redis.call('HGET', META, 'total'))
local build_requeues = number_or_zero(redis.call('HGET', META, 'requeues'))
local unit_requeues = number_or_zero(redis.call('HGET', REQUEUES, unit))
if unit_requeues >= max_requeues
  or (tolerance >= 0 and build_requeues >= math.ceil(total * tolerance)) then
  return 'refused'
end

if leased then
  drop_lease(unit)
end
-- Populate numbers the queue 0 .. total-1 and returned units go in front (below 0), so
-- total + build_requeues + 1 is behind every unit pending now, earlier requeues included.
redis.call('ZADD', PENDING, total + build_requeues + 1, unit)
redis.call('HINCRBY', REQUEUES, unit, 1)
redis.call('HINCRBY', META, 'requeues', 1)
emit('requeued', worker, unit, payload)
-- A stopped build whose last lease this was is finished now.
maybe_finish()
touch()
return 'requeued'
