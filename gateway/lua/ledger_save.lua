-- Save a running stream's usage so far: the record to write should its replica die.
--
-- KEYS[1] running streams' saved usage (hash)      KEYS[2] when each was saved (zset)
-- ARGV[1] the record's id                          ARGV[2] the record so far (JSON)

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
redis.call("ZADD", KEYS[2], now, ARGV[1])
return 1
