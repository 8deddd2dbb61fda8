-- _lib.lua: the prelude of every *write* script of conveyor's Redis queue. RedisQueue reads it
-- once and puts it in front of each write script when it registers them, so the key names and
-- helpers below mean the same thing everywhere. Read scripts (status, events) stand alone.
--
-- Key schema. Every key of build B is "conveyor:{B}:<name>". The {B} hash tag puts all of a
-- build's keys in one Redis Cluster (or Valkey) slot, so one script may use them together.
-- Write scripts receive them, always in this order, as:
--   KEYS[1]  meta         hash    leader, digest, meta (JSON from the leader), total,
--                                 max_unit_crashes, created_at, stop_reason, finished_at,
--                                 requeues (failed attempts sent back, build-wide);
--                                 it exists exactly when the build has been populated
--   KEYS[2]  units        list    every unit, in manifest order
--   KEYS[3]  attempts     hash    unit -> times leased so far; holds every unit of the manifest
--   KEYS[4]  crashes      hash    unit -> times it took its worker down (absent: 0)
--   KEYS[5]  pending      zset    unit -> queue order; lowest first. Units returned by expiry or
--                                 release go in front, failed attempts requeued to the back
--   KEYS[6]  leases       zset    unit -> lease deadline (seconds on the caller's clock)
--   KEYS[7]  owner        hash    leased unit -> worker holding it
--   KEYS[8]  workers      zset    worker -> joined_at
--   KEYS[9]  worker_info  hash    worker -> info (JSON: host, pid, ...)
--   KEYS[10] last_seen    hash    worker -> time of its last reserve or heartbeat
--   KEYS[11] seq          string  sequence number of the last event
--   KEYS[12] events       stream  entry id "<seq>-0"; fields kind, ts, data (JSON), worker?, unit?
-- Two scripts get more keys, from KEYS[13] on, touched (expiry pushed back) only by that script:
--   reserve.lua   reservations:<worker>  list  unit, attempt, unit, attempt, ...
--                 reserve_requests       hash  worker -> JSON {id, reply} of its last
--                                              reservation that leased units (KEYS[14])
--   requeue.lua   requeues               hash  unit -> times requeued (absent: 0)
-- A unit is in exactly one of pending, leases or neither (done), so done = total - pending - leased
-- and no counter can drift.
--
-- Every write script gets first:
--   ARGV[1]  now     the caller's clock in seconds (a float as a string, so tests can fake it)
--   ARGV[2]  ttl_ms  every key of the build expires this long after the build's last write

local META, UNITS, ATTEMPTS, CRASHES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local PENDING, LEASES, OWNER = KEYS[5], KEYS[6], KEYS[7]
local WORKERS, WORKER_INFO, LAST_SEEN = KEYS[8], KEYS[9], KEYS[10]
local SEQ, EVENTS = KEYS[11], KEYS[12]
local NOW, TTL_MS = ARGV[1], ARGV[2]

-- The error a script returns when the build's keys are gone; RedisQueue raises BuildStateLost.
local BUILD_LOST = 'BUILD_LOST'

local function populated()
  return redis.call('EXISTS', META) == 1
end

-- Append one event. The id "<seq>-0" lets a reader ask for "everything after seq N" exactly.
local function emit(kind, worker, unit, data)
  local seq = redis.call('INCR', SEQ)
  local fields = {'kind', kind, 'ts', NOW, 'data', data}
  if worker then
    fields[#fields + 1] = 'worker'
    fields[#fields + 1] = worker
  end
  if unit then
    fields[#fields + 1] = 'unit'
    fields[#fields + 1] = unit
  end
  redis.call('XADD', EVENTS, seq .. '-0', unpack(fields))
end

-- cjson writes an empty table as {}; a JSON list must stay a list.
local function json_list(items)
  if #items == 0 then
    return '[]'
  end
  return cjson.encode(items)
end

local function number_or_zero(reply)
  return tonumber(reply) or 0
end

-- Score that puts a unit in front of everything pending (a returned unit is retried first).
local function front_of_queue()
  local first = redis.call('ZRANGE', PENDING, 0, 0, 'WITHSCORES')
  local lowest = 0
  if #first > 0 then
    lowest = tonumber(first[2])
  end
  return lowest - 1
end

-- Units `worker` holds a lease on, sorted so that replies do not depend on hash order.
local function held_by(worker)
  local held = {}
  local owners = redis.call('HGETALL', OWNER)
  for i = 1, #owners, 2 do
    if owners[i + 1] == worker then
      held[#held + 1] = owners[i]
    end
  end
  table.sort(held)
  return held
end

local function mark_seen(worker)
  if redis.call('ZSCORE', WORKERS, worker) then
    redis.call('HSET', LAST_SEEN, worker, NOW)
  end
end

-- Emit `finished` exactly once: when every unit is done, or the build was stopped and the last
-- lease has come back. HSETNX on finished_at is the "exactly once".
local function maybe_finish()
  local total = tonumber(redis.call('HGET', META, 'total'))
  local leased = redis.call('ZCARD', LEASES)
  local done = total - redis.call('ZCARD', PENDING) - leased
  local stopped = redis.call('HEXISTS', META, 'stop_reason') == 1
  if done >= total or (stopped and leased == 0) then
    if redis.call('HSETNX', META, 'finished_at', NOW) == 1 then
      emit('finished', false, false, cjson.encode({done = done, total = total}))
    end
  end
end

-- Push back the expiry of every key this script was given: a build lives until it has been idle
-- for ttl_ms, however long it runs.
local function touch()
  for i = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[i], TTL_MS)
  end
end
