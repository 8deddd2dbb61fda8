-- heartbeat.lua: extend the leases a worker names and still holds (the units it knows it holds),
-- so a live worker never loses a slow test. A lease it does not name (one it never learnt of,
-- its reserve's reply lost) is left to expire and come back.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now       caller's clock, seconds
-- ARGV[2]  ttl_ms    key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  deadline  now + lease ttl
-- ARGV[5..] units    the units the worker holds, as it knows them
-- Returns how many of those units the worker still holds. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[3]
local held = 0
for i = 5, #ARGV do
  local unit = ARGV[i]
  if redis.call('HGET', OWNER, unit) == worker then
    redis.call('ZADD', LEASES, 'XX', ARGV[4], unit)
    held = held + 1
  end
end
mark_seen(worker)
touch()
return held
