-- reserve.lua: reclaim expired leases, then lease up to ARGV[4] units to one worker.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..12]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events
--              (each "conveyor:{<build>}:<name>")
-- KEYS[13]     conveyor:{<build>}:reservations:<worker>  list of unit, attempt (for replay)
-- KEYS[14]     conveyor:{<build>}:reserve_requests  hash  worker -> JSON {id, reply} of its
--              last reservation that leased units
-- ARGV[1]  now         caller's clock, seconds
-- ARGV[2]  ttl_ms      key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  max_units   at least 1
-- ARGV[5]  deadline    now + lease ttl: the new leases expire then unless heartbeats extend them
-- ARGV[6]  request_id  names this reservation; a retry with the same id (its reply was lost)
--                      gets the same reply and leases nothing more
-- Returns {state, pending, unit, attempt, unit, attempt, ...} with state 'leased', 'wait'
-- (nothing pending, leases outstanding) or 'exhausted'. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker, request_id = ARGV[3], ARGV[6]
local REQUESTS = KEYS[14]

-- A retry of a reservation that was applied: the worker holds these leases and must learn them
-- (even when the build was stopped since), or nobody would run them until they expire.
local last = redis.call('HGET', REQUESTS, worker)
if last then
  last = cjson.decode(last)
  if last.id == request_id then
    return last.reply
  end
end

if redis.call('HEXISTS', META, 'stop_reason') == 1 then
  return {'exhausted', 0}
end

-- A lease past its deadline belonged to a worker that stopped heartbeating: its unit goes back
-- to the front of the queue with the same attempt count; the next lease makes it attempt + 1.
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. NOW)
for _, unit in ipairs(expired) do
  local holder = redis.call('HGET', OWNER, unit)
  redis.call('ZREM', LEASES, unit)
  redis.call('HDEL', OWNER, unit)
  redis.call('ZADD', PENDING, front_of_queue(), unit)
  local data = cjson.encode({
    attempt = number_or_zero(redis.call('HGET', ATTEMPTS, unit)),
    crashes = number_or_zero(redis.call('HGET', CRASHES, unit)),
  })
  emit('lease_expired', holder, unit, data)
end

local picked = redis.call('ZPOPMIN', PENDING, tonumber(ARGV[4]))
local reply = {'leased', 0}
local leased = {}
for i = 1, #picked, 2 do
  local unit = picked[i]
  local attempt = redis.call('HINCRBY', ATTEMPTS, unit, 1)
  redis.call('ZADD', LEASES, ARGV[5], unit)
  redis.call('HSET', OWNER, unit, worker)
  redis.call('RPUSH', KEYS[13], unit, attempt)
  reply[#reply + 1] = unit
  reply[#reply + 1] = attempt
  leased[#leased + 1] = unit
end

if #picked > 0 then
  -- One "leased" event per reservation (not per unit) keeps the build record complete cheaply.
  emit('leased', worker, false, '{"units":' .. json_list(leased) .. '}')
  mark_seen(worker)
  reply[2] = redis.call('ZCARD', PENDING)
  redis.call('HSET', REQUESTS, worker, cjson.encode({id = request_id, reply = reply}))
  touch()
  return reply
end
touch()
-- Nothing pending. While leases are out, a unit may still come back (expiry, release).
if redis.call('ZCARD', LEASES) == 0 then
  return {'exhausted', 0}
end
return {'wait', 0}
