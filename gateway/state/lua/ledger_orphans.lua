-- Claim the saved progress of streams whose replica died, so that this replica writes their
-- records. Called by every replica every orphan_ms / 3, which is also its sign of life.
--
-- A save is an orphan when it is older than orphan_ms AND its writer gave no sign of life for
-- orphan_ms. A replica judges others only once it has itself been in touch for orphan_ms:
-- after an outage every sign of life is old, and a live writer must first get the time to
-- show up again. A claim lasts orphan_ms (if the claimer dies too, another claims it later);
-- writing the record (ledger_append.lua) removes the save. Writers silent for dedupe_ms are
-- forgotten, with their last applied batch number.
--
-- KEYS[1] running streams' saved usage (hash: id -> "writer LF record")
-- KEYS[2] when each was saved (zset)
-- KEYS[3] each writer's last sign of life (hash)    KEYS[4] since when it is in touch (hash)
-- KEYS[5] each writer's last applied batch number (hash)
-- ARGV[1] orphan_ms    ARGV[2] most entries to claim    ARGV[3] this writer    ARGV[4] dedupe_ms
--
-- Returns {id_1, record_1, id_2, record_2, ...}.

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local orphan_ms, me = tonumber(ARGV[1]), ARGV[3]
local last_seen = tonumber(redis.call("HGET", KEYS[3], me) or "0")
redis.call("HSET", KEYS[3], me, now)
local since = tonumber(redis.call("HGET", KEYS[4], me) or "-1")
if since < 0 or now - last_seen > orphan_ms / 2 then  -- first check, or back after a gap
  since = now
  redis.call("HSET", KEYS[4], me, now)
end
local writers = redis.call("HGETALL", KEYS[3])
for i = 1, #writers, 2 do
  if now - tonumber(writers[i + 1]) > tonumber(ARGV[4]) then
    redis.call("HDEL", KEYS[3], writers[i])
    redis.call("HDEL", KEYS[4], writers[i])
    redis.call("HDEL", KEYS[5], writers[i])
  end
end
if now - since < orphan_ms then
  return {}
end
local ids = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now - orphan_ms, "LIMIT", 0,
                       tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local saved = redis.call("HGET", KEYS[1], id)
  if not saved then
    redis.call("ZREM", KEYS[2], id)
  else
    local cut = string.find(saved, "\n", 1, true)
    local writer = string.sub(saved, 1, cut - 1)
    local seen = tonumber(redis.call("HGET", KEYS[3], writer) or "0")
    if now - seen > orphan_ms then
      redis.call("ZADD", KEYS[2], now, id)
      out[#out + 1] = id
      out[#out + 1] = string.sub(saved, cut + 1)
    end
  end
end
return out
