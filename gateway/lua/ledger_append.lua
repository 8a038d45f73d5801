-- Append usage records to the ledger and add each to the sums, once.
--
-- Idempotent by record id: a write retried after a timeout (Redis may have run the first one)
-- finds the id's marker and changes nothing for that record. Every key shares the {ledger}
-- hash tag: one slot, as Redis Cluster requires of a script. Several records per call: the
-- gateway sends few arguments per record (the sums are read from the record itself).
--
-- KEYS[1] the stream
-- KEYS[2] running streams' saved usage (hash)      KEYS[3] when each was saved (zset)
-- KEYS[4 + 3(i-1)..] record i: its id's marker, the day's sums (hash), its user's sums of
--                    the month (hash)
-- ARGV[1] dedupe_seconds    (how long a marker is kept: longer than any retry)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] sums_ttl_s
-- ARGV[4 + 4(i-1)..] record i: id, the record (JSON, stored as the entry's field `r`),
--                    "user TAB model TAB" (the day's sum fields' prefix),
--                    "YYYY-MM-DD TAB model TAB" (the month's sum fields' prefix)
--
-- Returns the number of records written (the others had been already).

local MEASURES = {"input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                  "total_tokens"}
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
local dedupe = tonumber(ARGV[1])
local ttl = tonumber(ARGV[3])
local written = 0
for i = 1, (#KEYS - 3) / 3 do
  local k = 4 + 3 * (i - 1)
  local a = 4 + 4 * (i - 1)
  local id = ARGV[a]
  -- The stream is over (or its orphan is being written): its saved progress goes, either way.
  redis.call("HDEL", KEYS[2], id)
  redis.call("ZREM", KEYS[3], id)
  if redis.call("SET", KEYS[k], "1", "NX", "EX", dedupe) then
    redis.call("XADD", KEYS[1], "MINID", "~", minid, "*", "r", ARGV[a + 1])
    local record = cjson.decode(ARGV[a + 1])
    local day_prefix, month_prefix = ARGV[a + 2], ARGV[a + 3]
    redis.call("HINCRBY", KEYS[k + 1], day_prefix .. "requests", 1)
    redis.call("HINCRBY", KEYS[k + 2], month_prefix .. "requests", 1)
    for _, measure in ipairs(MEASURES) do
      local amount = record[measure]
      if amount and amount ~= 0 then
        redis.call("HINCRBY", KEYS[k + 1], day_prefix .. measure, amount)
        redis.call("HINCRBY", KEYS[k + 2], month_prefix .. measure, amount)
      end
    end
    redis.call("EXPIRE", KEYS[k + 1], ttl)
    redis.call("EXPIRE", KEYS[k + 2], ttl)
    written = written + 1
  end
end
return written
