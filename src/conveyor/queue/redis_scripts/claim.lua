-- claim.lua: a worker marks leases it holds as started (it runs them now, or promised one to
-- pytest as nextitem): no steal takes them from then on. Renews them like a heartbeat. Called
-- about once per test, so it is one short script.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now       caller's clock, seconds
-- ARGV[2]  ttl_ms    key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  deadline  now + lease ttl
-- ARGV[5..] units    each once
-- Returns the units of ARGV[5..] the worker still holds, in that order. Error BUILD_LOST when the
-- build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[3]
local held = {}
for i = 5, #ARGV do
  local unit = ARGV[i]
  if redis.call('HGET', OWNER, unit) == worker then
    redis.call('ZADD', LEASES, 'XX', ARGV[4], unit)
    redis.call('SADD', CLAIMED, unit)
    held[#held + 1] = unit
  end
end
mark_seen(worker)
touch()
return held
