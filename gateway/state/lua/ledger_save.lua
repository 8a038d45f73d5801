-- Save a running stream's usage so far: the record to write should its replica die.
--
-- A save may run late: sent before the stream ended, it timed out on the client's side but
-- Redis ran it after the stream's own record was written (which removes the save and leaves
-- the id's marker). It must then leave nothing behind: a save left over would be adopted as
-- an orphan once its writer stops, and counted a second time after the marker expired.
--
-- KEYS[1] running streams' saved usage (hash: id -> "writer LF record")
-- KEYS[2] when each was saved (zset)
-- KEYS[3] each writer's last sign of life (hash, Unix ms)
-- KEYS[4] the record's marker (ledger_append.lua sets it when it writes the record)
-- ARGV[1] the record's id     ARGV[2] the writer's id     ARGV[3] the record so far (JSON)
--
-- Returns 1 when saved, 0 when the record was written already.

if redis.call("EXISTS", KEYS[4]) == 1 then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2] .. "\n" .. ARGV[3])
redis.call("ZADD", KEYS[2], now, ARGV[1])
redis.call("HSET", KEYS[3], ARGV[2], now)
return 1
