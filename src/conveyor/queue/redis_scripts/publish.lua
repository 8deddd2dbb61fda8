-- publish.lua: append a free-form event (worker errors, collection reports) to the stream.
-- Workers may publish before the manifest exists, so a missing build is only an error once the
-- caller has seen it populated.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now         caller's clock, seconds
-- ARGV[2]  ttl_ms      key expiry after the last write
-- ARGV[3]  must_exist  '1' when the caller has seen the build populated
-- ARGV[4]  kind
-- ARGV[5]  has_worker  '1' when ARGV[6] names the worker the event is about
-- ARGV[6]  worker
-- ARGV[7]  data        JSON
-- Returns 1. Error BUILD_LOST when must_exist and the build is gone.

if ARGV[3] == '1' and not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = false
if ARGV[5] == '1' then
  worker = ARGV[6]
end
emit(ARGV[4], worker, false, ARGV[7])
touch()
return 1
