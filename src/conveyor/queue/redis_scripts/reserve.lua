-- reserve.lua: reclaim expired leases, then lease up to ARGV[4] units to one worker.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- KEYS[17]     conveyor:{<build>}:reservations:<worker>  list of unit, attempt (for replay)
-- KEYS[18]     conveyor:{<build>}:reserve_requests  hash  worker -> JSON {id, reply} of its
--              last request that leased units
-- ARGV[1]  now         caller's clock, seconds
-- ARGV[2]  ttl_ms      key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  max_units   at least 1
-- ARGV[5]  deadline    now + lease ttl: the new leases expire then unless heartbeats extend them
-- ARGV[6]  request_id  names this reservation; a retry with the same id (its reply was lost)
--                      gets the same reply and leases nothing more
-- ARGV[7]  whole       what the reservation never ends inside: class, file, scope or none
--                      (see pop_front)
-- Returns {state, pending, unit, attempt, unit, attempt, ...} with state 'leased', 'wait'
-- (nothing to lease: leases outstanding, or what is pending lies behind this worker,
-- queue/forward.py) or 'exhausted'. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local RESERVATIONS, REQUESTS = KEYS[FIRST_EXTRA_KEY], KEYS[FIRST_EXTRA_KEY + 1]
local worker, request_id = ARGV[3], ARGV[6]

local again = recall(REQUESTS, worker, request_id)
if again then
  return again
end
if redis.call('HEXISTS', META, 'stop_reason') == 1 then
  return {'exhausted', 0}
end
reclaim_expired()

local lease_ttl = tonumber(ARGV[5]) - tonumber(NOW)
local picked = take_pending(worker, tonumber(ARGV[4]), ARGV[7], tonumber(NOW) - lease_ttl)
local reply = {'leased', 0}
for _, unit in ipairs(picked) do
  reply[#reply + 1] = unit
  reply[#reply + 1] = grant(unit, worker, ARGV[5], true, RESERVATIONS)
end

if #picked > 0 then
  -- One "leased" event per reservation (not per unit) keeps the build record complete cheaply.
  emit('leased', worker, false, '{"units":' .. json_list(picked) .. '}')
  mark_seen(worker)
  reply[2] = redis.call('ZCARD', PENDING)
  remember(REQUESTS, worker, request_id, reply)
  touch()
  return reply
end
touch()
-- Nothing to lease. While leases are out, a unit may still come back (expiry, release); units
-- still pending lie behind this worker, for another to run.
if redis.call('ZCARD', LEASES) == 0 and redis.call('ZCARD', PENDING) == 0 then
  return {'exhausted', 0}
end
return {'wait', 0}
