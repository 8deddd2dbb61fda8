-- hand_back.lua: a live worker returns units it holds but has not started, in the order it
-- would have run them, to the front of the queue (the build stopped, or a slow run without
-- history). Units it does not hold (any more) are skipped; every other lease stays its own.
-- The worker's mark in each of their modules comes down to the lowest of them.
-- Runs after _lib.lua, which names the keys and defines the helpers.
--
-- KEYS[1..16]  the build's keys in _lib.lua's order: meta, units, attempts, crashes, pending,
--              leases, owner, workers, worker_info, last_seen, seq, events, claimed, lease_seq,
--              forward_ranks, forward_marks (each "conveyor:{<build>}:<name>")
-- ARGV[1]  now     caller's clock, seconds
-- ARGV[2]  ttl_ms  key expiry after the last write
-- ARGV[3]  worker
-- ARGV[4]  cause   JSON object, copied into the event
-- ARGV[5..] units  in the order the worker would have run them, each once
-- Returns the units actually returned, in that order. Error BUILD_LOST when the build is gone.

if not populated() then
  return redis.error_reply(BUILD_LOST)
end

local worker = ARGV[3]
local returned = {}
for i = 5, #ARGV do
  local unit = ARGV[i]
  if redis.call('HGET', OWNER, unit) == worker then
    returned[#returned + 1] = unit
  end
end

to_front(returned)

-- forward.lowered: the worker has not gone past what it hands back unstarted.
for _, unit in ipairs(returned) do
  local rank = rank_of(unit)
  if rank then
    local key = worker .. '\0' .. file_of(unit)
    local mark = tonumber(redis.call('HGET', FORWARD_MARKS, key))
    if mark and rank < mark then
      redis.call('HSET', FORWARD_MARKS, key, rank)
    end
  end
end

emit('leases_returned', worker, false,
  '{"cause":' .. ARGV[4] .. ',"requeued":' .. json_list(returned) .. '}')
maybe_finish()  -- a stopped build ends when its last lease comes back
touch()
return returned
