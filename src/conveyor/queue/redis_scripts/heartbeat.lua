-- heartbeat.lua: extend every lease one worker holds, so a live worker never loses a slow test.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..12]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events
--              (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now       caller's clock, seconds
-- ARGV[2]  ttl_ms    key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  deadline  now + lease ttl
-- Returns how many leases the worker still holds. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[3]
local held = held_by(worker)
for _, unit in ipairs(held) do
  redis.call('ZADD', LEASES, 'XX', ARGV[4], unit)
end
mark_seen(worker)
touch()
return #held
