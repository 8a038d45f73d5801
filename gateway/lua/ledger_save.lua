-- Save a running stream's usage so far: the record to write should its replica die.
--
-- KEYS[1] running streams' saved usage (hash: id -> "writer LF record")
-- KEYS[2] when each was saved (zset)
-- KEYS[3] each writer's last sign of life (hash, Unix ms)
-- ARGV[1] the record's id     ARGV[2] the writer's id     ARGV[3] the record so far (JSON)

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2] .. "\n" .. ARGV[3])
redis.call("ZADD", KEYS[2], now, ARGV[1])
redis.call("HSET", KEYS[3], ARGV[2], now)
return 1
