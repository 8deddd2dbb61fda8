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
--   KEYS[13] claimed      set     leased units their worker has started: never stolen
--   KEYS[14] lease_seq    hash    leased unit -> its place in the order leases were granted
--                                 (counter: the field `leases_granted` of meta)
--   KEYS[15] forward_ranks hash   unit of a split module -> its rank (queue/forward.py: twice
--                                 its place in collection order, + 1 if it starts a range)
--   KEYS[16] forward_marks hash   "<worker>\0<module>" -> highest rank that worker has leased there;
--                                 a released (dead) worker's go
-- Some scripts get more keys, from KEYS[17] on, touched (expiry pushed back) only by them:
--   reserve.lua, steal.lua  reservations:<worker>  list  unit, attempt, unit, attempt, ...
--                           reserve_requests       hash  worker -> JSON {id, reply} of its last
--                                                  request that leased units (KEYS[18])
--   steal.lua               stolen                 hash  "<victim>\0<unit>\0<attempt>" -> how
--                                                  many such entries left the victim's
--                                                  reservations (KEYS[19])
--   requeue.lua             requeues               hash  unit -> times requeued (absent: 0)
-- A unit is in exactly one of pending, leases or neither (done), so done = total - pending - leased
-- and no counter can drift.
--
-- Every write script gets first:
--   ARGV[1]  now     the caller's clock in seconds (a float as a string, so tests can fake it)
--   ARGV[2]  ttl_ms  every key of the build expires this long after the build's last write

local META, UNITS, ATTEMPTS, CRASHES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local PENDING, LEASES, OWNER = KEYS[5], KEYS[6], KEYS[7]
local WORKERS, WORKER_INFO, LAST_SEEN = KEYS[8], KEYS[9], KEYS[10]
local SEQ, EVENTS, CLAIMED, LEASE_SEQ = KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local FORWARD_RANKS, FORWARD_MARKS = KEYS[15], KEYS[16]
local FIRST_EXTRA_KEY = 17
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

-- "path::Class" of a test id with a second "::" part, else nil (scheduling.class_of).
local function class_of(id)
  local first = string.find(id, '::', 1, true)
  if not first then
    return nil
  end
  local second = string.find(id, '::', first + 2, true)
  if not second then
    return nil
  end
  return string.sub(id, 1, second - 1)
end

-- The file of a test id (forward.file_of).
local function file_of(id)
  local first = string.find(id, '::', 1, true)
  if first then
    return string.sub(id, 1, first - 1)
  end
  return id
end

-- The xdist_group a unit's name carries, 'ID (xdist_group NAME)' (unit_names.group_of: the
-- last GROUP_OPEN of a name that ends in ')'), or nil.
local GROUP_OPEN = ' (xdist_group '
local function group_of(id)
  if string.sub(id, -1) ~= ')' then
    return nil
  end
  local at = nil
  local from = 1
  while true do
    local found = string.find(id, GROUP_OPEN, from, true)
    if not found then
      break
    end
    at = found
    from = found + 1
  end
  if not at then
    return nil
  end
  return string.sub(id, at + #GROUP_OPEN, -2)
end

-- What one worker runs whole under `mode` (scheduling.whole_key): 'class' the class, 'file'
-- the file, 'scope' the class or else the file, 'group' the xdist_group, 'all' the whole
-- build; nil when nothing holds the unit ('none').
local function whole_key(id, mode)
  if mode == 'all' then
    return ''
  end
  if mode == 'group' then
    return group_of(id)
  end
  if mode == 'class' then
    return class_of(id)
  end
  if mode == 'file' or mode == 'scope' then
    local key = nil
    if mode == 'scope' then
      key = class_of(id)
    end
    return key or file_of(id)
  end
  return nil
end

-- Take up to `count` (at least 1) units off the front of the queue, then every unit that
-- `mode` keeps with the last one taken (scheduling.through_group_end).
local function pop_front(count, mode)
  local picked = {}
  local popped = redis.call('ZPOPMIN', PENDING, math.max(1, count))
  for i = 1, #popped, 2 do
    picked[#picked + 1] = popped[i]
  end
  if #picked > 0 then
    local key = whole_key(picked[#picked], mode)
    while key do
      local following = redis.call('ZRANGE', PENDING, 0, 0)
      if #following == 0 or whole_key(following[1], mode) ~= key then
        break
      end
      redis.call('ZPOPMIN', PENDING, 1)
      picked[#picked + 1] = following[1]
    end
  end
  return picked
end

-- A worker goes forward through a module, never back: queue/forward.py in Lua.
local FORWARD_SCAN = 500  -- forward.SCAN

local function rank_of(unit)
  return tonumber(redis.call('HGET', FORWARD_RANKS, unit))
end

local function mark_of(worker, module)
  return tonumber(redis.call('HGET', FORWARD_MARKS, worker .. '\0' .. module))
end

local function is_behind(rank, mark)
  return rank ~= nil and mark ~= nil and rank < mark
end

-- Raise `worker`'s mark in the module of `unit`, just leased to it (forward.marked).
local function mark_leased(worker, unit)
  local rank = rank_of(unit)
  if rank then
    local module = file_of(unit)
    local mark = mark_of(worker, module)
    if not mark or rank > mark then
      redis.call('HSET', FORWARD_MARKS, worker .. '\0' .. module, rank)
    end
  end
end

-- A released worker runs nothing more, and a process started under its id starts afresh.
local function forget_marks(worker)
  local prefix = worker .. '\0'
  for _, key in ipairs(redis.call('HKEYS', FORWARD_MARKS)) do
    if string.sub(key, 1, #prefix) == prefix then
      redis.call('HDEL', FORWARD_MARKS, key)
    end
  end
end

-- forward.choose: the pending units a reservation of `count` by `worker` takes, or nil when
-- every unit among the first FORWARD_SCAN lies behind it.
local function forward_choose(worker, count, mode)
  local marks = {}  -- module -> mark (false: none), raised by what is taken here
  local function mark_in(module)
    if marks[module] == nil then
      marks[module] = mark_of(worker, module) or false
    end
    return marks[module] or nil
  end
  local taken, looked, offset = {}, 0, 0
  while true do
    local batch = redis.call('ZRANGE', PENDING, offset, offset + 63)  -- most take the first
    if #batch == 0 then
      break
    end
    offset = offset + #batch
    for _, unit in ipairs(batch) do
      local module, rank = file_of(unit), rank_of(unit)
      local behind = is_behind(rank, mark_in(module))
      local take = true
      if #taken == 0 then
        if looked >= FORWARD_SCAN then
          return nil
        end
        looked = looked + 1
        take = not behind
      else
        if behind or (rank and rank % 2 == 1) then  -- behind, or another range (forward.choose)
          return taken
        end
        if #taken >= math.max(1, count) then
          local key = whole_key(unit, mode)
          if not key or key ~= whole_key(taken[#taken], mode) then
            return taken
          end
        end
      end
      if take then
        taken[#taken + 1] = unit
        local mark = mark_in(module)
        if rank and (not mark or rank > mark) then
          marks[module] = rank
        end
      end
    end
  end
  if #taken == 0 and looked > 0 then
    return nil
  end
  return taken
end

-- forward.others_could_run: whether a worker other than `worker`, seen at `since` or later,
-- could run `unit` forward.
local function others_could_run(unit, worker, since)
  local rank, module = rank_of(unit), file_of(unit)
  local seen = redis.call('HGETALL', LAST_SEEN)
  for i = 1, #seen, 2 do
    local other = seen[i]
    if other ~= worker and tonumber(seen[i + 1]) >= since
        and not is_behind(rank, mark_of(other, module)) then
      return true
    end
  end
  return false
end

-- The pending units a reservation of `count` by `worker` leases (pop_front, passing over units
-- behind the worker in a split module); {} when it waits for another worker to run them.
-- `since`: a worker seen since then is alive.
local function take_pending(worker, count, mode, since)
  if redis.call('EXISTS', FORWARD_RANKS) == 0 then
    return pop_front(count, mode)
  end
  local picked = forward_choose(worker, count, mode)
  if picked == nil then
    local first = redis.call('ZRANGE', PENDING, 0, 0)[1]
    if others_could_run(first, worker, since) then
      return {}
    end
    return pop_front(count, mode)
  end
  for _, unit in ipairs(picked) do
    redis.call('ZREM', PENDING, unit)
  end
  return picked
end

-- The one way out of a lease (completed, requeued, returned, expired): every trace of it goes.
local function drop_lease(unit)
  redis.call('ZREM', LEASES, unit)
  redis.call('HDEL', OWNER, unit)
  redis.call('SREM', CLAIMED, unit)
  redis.call('HDEL', LEASE_SEQ, unit)
end

-- Leased units back in front of everything pending, to be served in the order given.
local function to_front(units)
  local front = front_of_queue() + 1 - #units
  for index, unit in ipairs(units) do
    drop_lease(unit)
    redis.call('ZADD', PENDING, front + index - 1, unit)
  end
end

-- A gone worker's leases (expired, released), given in lease order, back to the front with the
-- most recently leased first: the one it started first is the likeliest to have killed or hung
-- it, the ones it never started are not; but what the build keeps whole (its 'whole' in META,
-- 'none' when absent) comes back in its own order (scheduling.back_to_front_order).
local function to_front_of_a_gone_worker(units)
  local mode = redis.call('HGET', META, 'whole') or 'none'
  local groups = {}
  for _, unit in ipairs(units) do
    local last = groups[#groups]
    local key = whole_key(unit, mode)
    if last and key and key == whole_key(last[#last], mode) then
      last[#last + 1] = unit
    else
      groups[#groups + 1] = {unit}
    end
  end
  local ordered = {}
  for index = #groups, 1, -1 do
    for _, unit in ipairs(groups[index]) do
      ordered[#ordered + 1] = unit
    end
  end
  to_front(ordered)
end

-- Lease `unit` to `worker` until `deadline`, at the end of its reservation order (the list
-- `reservations`). A new lease is a new attempt; a stolen one keeps its attempt.
local function grant(unit, worker, deadline, new_attempt, reservations)
  local attempt
  if new_attempt then
    attempt = redis.call('HINCRBY', ATTEMPTS, unit, 1)
  else
    attempt = tonumber(redis.call('HGET', ATTEMPTS, unit))
  end
  redis.call('ZADD', LEASES, deadline, unit)
  redis.call('HSET', OWNER, unit, worker)
  redis.call('SREM', CLAIMED, unit)
  redis.call('HSET', LEASE_SEQ, unit, redis.call('HINCRBY', META, 'leases_granted', 1))
  redis.call('RPUSH', reservations, unit, attempt)
  mark_leased(worker, unit)
  return attempt
end

-- Sort `units` (leased) in the order their leases were granted.
local function by_lease_order(units)
  local order = {}
  for _, unit in ipairs(units) do
    order[unit] = tonumber(redis.call('HGET', LEASE_SEQ, unit))
  end
  table.sort(units, function(a, b) return order[a] < order[b] end)
  return units
end

-- Units `worker` holds a lease on, in the order they were granted.
local function held_by(worker)
  local held = {}
  local owners = redis.call('HGETALL', OWNER)
  for i = 1, #owners, 2 do
    if owners[i + 1] == worker then
      held[#held + 1] = owners[i]
    end
  end
  return by_lease_order(held)
end

-- A lease past its deadline belonged to a worker that stopped heartbeating: its unit goes back
-- to the front of the queue (to_front_of_a_gone_worker) with the same attempt count; the next
-- lease makes it attempt + 1.
local function reclaim_expired()
  local expired = by_lease_order(redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. NOW))
  for _, unit in ipairs(expired) do
    local data = cjson.encode({
      attempt = number_or_zero(redis.call('HGET', ATTEMPTS, unit)),
      crashes = number_or_zero(redis.call('HGET', CRASHES, unit)),
    })
    emit('lease_expired', redis.call('HGET', OWNER, unit), unit, data)
  end
  to_front_of_a_gone_worker(expired)
end

-- The reply to `worker`'s last request that leased units, when `request_id` names it (a retry
-- after a lost reply: the worker holds those leases and must learn them, even after a stop).
local function recall(requests, worker, request_id)
  local last = redis.call('HGET', requests, worker)
  if last then
    last = cjson.decode(last)
    if last.id == request_id then
      return last.reply
    end
  end
  return nil
end

local function remember(requests, worker, request_id, reply)
  redis.call('HSET', requests, worker, cjson.encode({id = request_id, reply = reply}))
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
