-- resume.lua: a stopped build with tests left is run again: clear the stop, so that workers
-- reserve what is left; the results so far stay. A finished build (every unit done) is not
-- resumed. Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now     caller's clock, seconds
-- ARGV[2]  ttl_ms  key expiry after the last write
-- ARGV[3]  reason  why it is resumed, copied into the event
-- Returns 1 when this call resumed the build, else 0. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end
local stopped = redis.call('HGET', META, 'stop_reason')
if not stopped then
  return 0
end
local total = tonumber(redis.call('HGET', META, 'total'))
local left = redis.call('ZCARD', PENDING) + redis.call('ZCARD', LEASES)
if left == 0 then
  return 0
end
redis.call('HDEL', META, 'stop_reason', 'finished_at')
redis.call('DEL', FORWARD_MARKS)  -- new processes resume it: none has run anything yet
emit('resumed', false, false,
  cjson.encode({reason = ARGV[3], stopped = stopped, left = left, total = total}))
touch()
return 1
