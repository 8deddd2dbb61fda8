-- stop.lua: stop handing out units (-x, --maxfail, Ctrl-C); leases already held still complete.
-- The first reason wins. Stopping a build that was never populated does nothing.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now           caller's clock, seconds
-- ARGV[2]  ttl_ms        key expiry after the last write
-- ARGV[3]  must_exist    '1' when the caller has seen the build populated
-- ARGV[4]  reason
-- ARGV[5]  stopped_data  data of the `stopped` event, JSON
-- Returns 1 when this call stopped the build, else 0. Error BUILD_LOST when must_exist and the
-- build is gone.

if not populated() then
  if ARGV[3] == '1' then
    return redis.error_reply(BUILD_LOST)
  end
  return 0
end
if redis.call('HSETNX', META, 'stop_reason', ARGV[4]) == 0 then
  return 0
end

emit('stopped', false, false, ARGV[5])
maybe_finish()
touch()
return 1
