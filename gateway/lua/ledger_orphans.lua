-- Claim the saved progress of streams whose replica stopped saving it (it died), so that
-- this replica writes their records. A claim lasts orphan_ms: if the claimer dies too, the
-- streams are claimed again later. Writing a record (ledger_append.lua) removes its entry.
--
-- KEYS[1] running streams' saved usage (hash)      KEYS[2] when each was saved (zset)
-- ARGV[1] orphan_ms         ARGV[2] most entries to claim at once
--
-- Returns {id_1, record_1, id_2, record_2, ...}.

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = now - tonumber(ARGV[1])
local ids = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", stale, "LIMIT", 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call("HGET", KEYS[1], id)
  if record then
    redis.call("ZADD", KEYS[2], now, id)
    out[#out + 1] = id
    out[#out + 1] = record
  else
    redis.call("ZREM", KEYS[2], id)
  end
end
return out
