-- release.lua: a supervisor saw a worker die; take its leases back at once. Only the culprit
-- (the unit it was running, when known) is charged a crash; a unit charged max_unit_crashes
-- times is finalised as a failure instead of going back, so a build never loops forever, and
-- with `final` (a hard timeout) the culprit is finalised at once, whatever its crash count.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now          caller's clock, seconds
-- ARGV[2]  ttl_ms       key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  has_culprit  '1' when ARGV[5] names the unit that took the worker down
-- ARGV[5]  culprit
-- ARGV[6]  cause        JSON object (signal, timeout, traceback, ...), copied into the events
-- ARGV[7]  final        '1' to finalise the culprit now instead of charging it and retrying
-- ARGV[8]  kind         event kind: 'worker_lost', or 'leases_returned' for an orderly hand-back
-- Returns {unit, attempt, crashes, finalised (1/0), ...} per released unit, in the order they
-- were leased; the requeued ones go back to the front, the most recently leased first.
-- Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker, has_culprit, culprit, cause = ARGV[3], ARGV[4] == '1', ARGV[5], ARGV[6]
local final = ARGV[7] == '1'
local limit = tonumber(redis.call('HGET', META, 'max_unit_crashes'))
local reply, requeued = {}, {}

for _, unit in ipairs(held_by(worker)) do
  local attempt = number_or_zero(redis.call('HGET', ATTEMPTS, unit))
  local crashes = number_or_zero(redis.call('HGET', CRASHES, unit))
  local is_culprit = has_culprit and unit == culprit
  if is_culprit then
    crashes = crashes + 1
  end
  redis.call('HSET', CRASHES, unit, crashes)
  local finalised = crashes >= limit or (is_culprit and final)
  if finalised then
    drop_lease(unit)
    -- cause is spliced in verbatim: a decode/encode round trip through cjson would turn {} and
    -- [] into each other and round floats.
    emit('unit_crashed', worker, unit,
      '{"attempt":' .. attempt .. ',"crashes":' .. crashes .. ',"cause":' .. cause .. '}')
  else
    requeued[#requeued + 1] = unit
  end
  reply[#reply + 1] = unit
  reply[#reply + 1] = attempt
  reply[#reply + 1] = crashes
  reply[#reply + 1] = finalised and 1 or 0
end

to_front_of_a_gone_worker(requeued)
if ARGV[8] == 'worker_lost' then  -- not a live worker's orderly hand-back
  redis.call('HDEL', LAST_SEEN, worker)
  forget_marks(worker)
end
emit(ARGV[8], worker, false,
  '{"cause":' .. cause .. ',"requeued":' .. json_list(requeued) .. '}')
maybe_finish()
touch()
return reply
