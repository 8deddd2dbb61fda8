-- steal.lua: an idle worker takes unstarted leases from the busiest one. The rule is
-- conveyor.queue.stealing's, in Lua; the conformance suite holds the two to the same answers.
-- Like reserve.lua first: a retried request gets its reply again, a stopped build answers
-- 'exhausted', expired leases are reclaimed, and pending units are leased as reserve would.
-- With nothing pending, the victim is the other worker with the most unclaimed leases (ties:
-- the smallest id, byte by byte); the thief gets the tail of them in the victim's order, about
-- half and at most max_units, cut where nothing ARGV[7] keeps whole is split (a victim with no
-- such cut is passed over); when that tail lies behind the thief, the run ends with the last
-- lease that does not. The leases keep their attempt and get the thief's deadline.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- KEYS[17]     conveyor:{<build>}:reservations:<thief>  list of unit, attempt (for replay)
-- KEYS[18]     conveyor:{<build>}:reserve_requests  hash  worker -> JSON {id, reply}
-- KEYS[19]     conveyor:{<build>}:stolen  hash  "<victim>\0<unit>\0<attempt>" -> count: entries
--              of the victim's reservations that are the thief's now
-- ARGV[1]  now         caller's clock, seconds
-- ARGV[2]  ttl_ms      key expiry after the last write
-- ARGV[3]  thief
-- ARGV[4]  max_units   at least 1
-- ARGV[5]  deadline    now + lease ttl
-- ARGV[6]  request_id  as for reserve.lua
-- ARGV[7]  whole       as for reserve.lua: what neither a lease of pending units nor a cut of
--                      the victim's splits
-- Returns what reserve.lua returns. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local RESERVATIONS = KEYS[FIRST_EXTRA_KEY]
local REQUESTS, STOLEN = KEYS[FIRST_EXTRA_KEY + 1], KEYS[FIRST_EXTRA_KEY + 2]
local thief, max_units, deadline, request_id = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local whole = ARGV[7]

local function clean_boundary(before, first)
  if before == nil then
    return true
  end
  local key = whole_key(first, whole)
  return key == nil or key ~= whole_key(before, whole)
end

-- Byte order, as Python compares str; Lua's < on strings follows the server's locale.
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- Whether `unit` lies behind the thief in a split module (queue/forward.py).
local function behind_thief(unit)
  return is_behind(rank_of(unit), mark_of(thief, file_of(unit)))
end

-- stealing._cut_ending_at: the leases positions[start + 1 .. end] to take, or {}; a start
-- that would take a unit behind the thief is not clean either.
local function cut_ending_at(held, positions, end_at)
  local count = #positions
  local take = math.min(math.floor((count + 1) / 2), max_units, end_at)
  if take == 0 then
    return {}
  end
  local lowest, target = end_at - math.min(end_at, max_units), end_at - take
  local starts = {}
  for start = target, end_at - 1 do
    starts[#starts + 1] = start
  end
  for start = target - 1, lowest, -1 do
    starts[#starts + 1] = start
  end
  for _, start in ipairs(starts) do
    local at = positions[start + 1]
    local before = nil
    if at > 1 then
      before = held[at - 1].unit
    end
    if clean_boundary(before, held[at].unit) then
      local taken, forward = {}, true
      for k = start + 1, end_at do
        taken[#taken + 1] = held[positions[k]].unit
        forward = forward and not behind_thief(taken[#taken])
      end
      if forward then
        return taken
      end
    end
  end
  return {}
end

-- stealing.cut: a run of `held`'s unclaimed leases ({unit, claimed} in the victim's order) to
-- take, or {}: ending with the last of them, else (stealing._ends) with the last one not
-- behind the thief, where that end splits nothing kept whole.
local function cut(held)
  local positions = {}
  for index, lease in ipairs(held) do
    if not lease.claimed then
      positions[#positions + 1] = index
    end
  end
  local taken = cut_ending_at(held, positions, #positions)
  if #taken > 0 then
    return taken
  end
  for k = #positions, 1, -1 do
    if not behind_thief(held[positions[k]].unit) then
      if k < #positions and clean_boundary(held[positions[k]].unit, held[positions[k] + 1].unit) then
        return cut_ending_at(held, positions, k)
      end
      return {}
    end
  end
  return {}
end

-- Every other worker's leases in its order, and the workers with unclaimed ones, busiest first.
local function victims()
  local held, unclaimed, workers = {}, {}, {}
  local owners = redis.call('HGETALL', OWNER)
  local units = {}
  for i = 1, #owners, 2 do
    units[#units + 1] = owners[i]
  end
  for _, unit in ipairs(by_lease_order(units)) do
    local worker = redis.call('HGET', OWNER, unit)
    if worker ~= thief then
      local claimed = redis.call('SISMEMBER', CLAIMED, unit) == 1
      if not held[worker] then
        held[worker], unclaimed[worker] = {}, 0
      end
      held[worker][#held[worker] + 1] = {unit = unit, claimed = claimed}
      if not claimed then
        if unclaimed[worker] == 0 then
          workers[#workers + 1] = worker
        end
        unclaimed[worker] = unclaimed[worker] + 1
      end
    end
  end
  table.sort(workers, function(a, b)
    if unclaimed[a] ~= unclaimed[b] then
      return unclaimed[a] > unclaimed[b]
    end
    return bytes_less(a, b)
  end)
  return workers, held
end

local again = recall(REQUESTS, thief, request_id)
if again then
  return again
end
if redis.call('HEXISTS', META, 'stop_reason') == 1 then
  return {'exhausted', 0}
end
reclaim_expired()
touch()

local reply = {'leased', 0}
local since = 2 * tonumber(NOW) - tonumber(deadline)  -- now - the lease ttl
local picked = take_pending(thief, max_units, whole, since)
if #picked > 0 then  -- pending units first, exactly as reserve.lua leases them
  for _, unit in ipairs(picked) do
    reply[#reply + 1] = unit
    reply[#reply + 1] = grant(unit, thief, deadline, true, RESERVATIONS)
  end
  emit('leased', thief, false, '{"units":' .. json_list(picked) .. '}')
else
  local workers, held = victims()
  local victim, taken = nil, {}
  for _, worker in ipairs(workers) do
    taken = cut(held[worker])
    if #taken > 0 then
      victim = worker
      break
    end
  end
  if not victim then
    if redis.call('ZCARD', LEASES) == 0 and redis.call('ZCARD', PENDING) == 0 then
      return {'exhausted', 0}
    end
    return {'wait', 0}
  end
  for _, unit in ipairs(taken) do
    local attempt = grant(unit, thief, deadline, false, RESERVATIONS)
    redis.call('HINCRBY', STOLEN, victim .. '\0' .. unit .. '\0' .. attempt, 1)
    reply[#reply + 1] = unit
    reply[#reply + 1] = attempt
  end
  redis.call('SADD', CLAIMED, taken[1])  -- the thief runs it at once: no one steals it back
  emit('stolen', thief, false,
    '{"units":' .. json_list(taken) .. ',"from":' .. cjson.encode(victim) .. '}')
end
mark_seen(thief)
reply[2] = redis.call('ZCARD', PENDING)
remember(REQUESTS, thief, request_id, reply)
touch()
return reply
