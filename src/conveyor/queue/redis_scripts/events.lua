-- events.lua: a page of the event stream, and whether the build still exists, read together so
-- a reader can tell "no news yet" from "the build's keys are gone" (read only; no _lib.lua).
--
-- Key schema: see _lib.lua; every key is "conveyor:{<build>}:<name>".
-- KEYS[1]  meta    hash    exists exactly when the build has been populated
-- KEYS[2]  events  stream  entry id "<seq>-0"; fields kind, ts, data (JSON), worker?, unit?
-- ARGV[1]  first   the lowest sequence number wanted (the reader's cursor + 1)
-- ARGV[2]  limit   at most this many entries (a positive integer)
-- Returns {populated (1/0), {{id, {field, value, ...}}, ...}} oldest first.

local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
return {redis.call('EXISTS', KEYS[1]), entries}
