-- join.lua: record that a worker is alive and what it is. Workers join before the manifest
-- exists, so a missing build is only an error once the caller has seen it populated.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now          caller's clock, seconds
-- ARGV[2]  ttl_ms       key expiry after the last write
-- ARGV[3]  must_exist   '1' when the caller has seen the build populated
-- ARGV[4]  worker
-- ARGV[5]  info         JSON (host, pid, ...), also the data of the `worker_joined` event
-- Returns 1. Error BUILD_LOST when must_exist and the build is gone.

if ARGV[3] == '1' and not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[4]
redis.call('HSET', WORKER_INFO, worker, ARGV[5])
redis.call('ZADD', WORKERS, NOW, worker)
redis.call('HSET', LAST_SEEN, worker, NOW)
emit('worker_joined', worker, false, ARGV[5])
touch()
return 1
