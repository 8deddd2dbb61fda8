-- populate.lua: publish the manifest unless one exists (leader election is "first one wins").
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now               caller's clock, seconds
-- ARGV[2]  ttl_ms            key expiry after the last write
-- ARGV[3]  leader            worker publishing the manifest
-- ARGV[4]  digest            collection digest of the units
-- ARGV[5]  meta              build-wide settings, JSON
-- ARGV[6]  max_unit_crashes  crashes after which a unit is finalised as a failure
-- ARGV[7]  populated_data    data of the `populated` event, JSON
-- ARGV[8]  whole             what the build keeps on one worker (scheduling.whole_of), kept
--                            for to_front_of_a_gone_worker
-- ARGV[9]  ranks             one per unit, comma-separated: its rank in a split module
--                            (queue/forward.py), or '-' for none
-- ARGV[10..] units           unique, in manifest order
-- Returns 1 when this caller became the leader, 0 when a manifest already existed.

if populated() then
  return 0
end

local FIRST_UNIT = 10
local total = #ARGV - FIRST_UNIT + 1
redis.call('HSET', META, 'leader', ARGV[3], 'digest', ARGV[4], 'meta', ARGV[5],
  'total', total, 'max_unit_crashes', ARGV[6], 'created_at', NOW, 'whole', ARGV[8])

-- unpack() is bounded by the Lua C stack, so large manifests are written in chunks.
local CHUNK = 500
for start = FIRST_UNIT, #ARGV, CHUNK do
  local stop = math.min(start + CHUNK - 1, #ARGV)
  local orders, attempts = {}, {}
  for i = start, stop do
    orders[#orders + 1] = i - FIRST_UNIT
    orders[#orders + 1] = ARGV[i]
    attempts[#attempts + 1] = ARGV[i]
    attempts[#attempts + 1] = 0
  end
  redis.call('RPUSH', UNITS, unpack(ARGV, start, stop))
  redis.call('ZADD', PENDING, unpack(orders))
  redis.call('HSET', ATTEMPTS, unpack(attempts))
end

local ranked, index = {}, FIRST_UNIT
for rank in string.gmatch(ARGV[9], '[^,]+') do
  if rank ~= '-' then
    ranked[#ranked + 1] = ARGV[index]
    ranked[#ranked + 1] = rank
  end
  index = index + 1
  if #ranked >= 2 * CHUNK then
    redis.call('HSET', FORWARD_RANKS, unpack(ranked))
    ranked = {}
  end
end
if #ranked > 0 then
  redis.call('HSET', FORWARD_RANKS, unpack(ranked))
end

emit('populated', ARGV[3], false, ARGV[7])
maybe_finish()
touch()
return 1
