-- Append usage records to the ledger and add each to its user's sums, once.
--
-- Idempotent by record id: a write retried after a timeout (Redis may have run the first one)
-- finds the id's marker and changes nothing for that record. Every key shares the {ledger}
-- hash tag: one slot, as Redis Cluster requires of a script. Many records per call, few
-- arguments each (the sums are read from the record itself), and each hash's expiry set once
-- per call: the Redis work per record is about ten commands.
--
-- KEYS[1] the stream
-- KEYS[2] running streams' saved usage (hash)      KEYS[3] when each was saved (zset)
-- KEYS[4 + 3(i-1)..] record i: its id's marker, the users of its day (set), its user's sums
--                    of the month (hash, fields "YYYY-MM-DD TAB model TAB measure")
-- ARGV[1] dedupe_seconds    (how long a marker is kept: longer than any retry)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] sums_ttl_s
-- ARGV[4 + 5(i-1)..] record i: id, the record (JSON, stored as the entry's field `r`), user,
--                    "YYYY-MM-DD TAB model TAB" (its sum fields' prefix), and "1" when a
--                    running stream's save may exist for it, else ""
--
-- Returns the number of records written (the others had been already).

local MEASURES = {"input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                  "total_tokens"}
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
local dedupe = tonumber(ARGV[1])
local expiring = {}
local written = 0
for i = 1, (#KEYS - 3) / 3 do
  local k = 4 + 3 * (i - 1)
  local a = 4 + 5 * (i - 1)
  local id = ARGV[a]
  if ARGV[a + 4] ~= "" then  -- the stream is over, or its orphan written: its save goes
    redis.call("HDEL", KEYS[2], id)
    redis.call("ZREM", KEYS[3], id)
  end
  if redis.call("SET", KEYS[k], "1", "NX", "EX", dedupe) then
    redis.call("XADD", KEYS[1], "MINID", "~", minid, "*", "r", ARGV[a + 1])
    redis.call("SADD", KEYS[k + 1], ARGV[a + 2])
    local record = cjson.decode(ARGV[a + 1])
    local sums, prefix = KEYS[k + 2], ARGV[a + 3]
    redis.call("HINCRBY", sums, prefix .. "requests", 1)
    for _, measure in ipairs(MEASURES) do
      local amount = record[measure]
      if amount and amount ~= 0 then
        redis.call("HINCRBY", sums, prefix .. measure, amount)
      end
    end
    expiring[KEYS[k + 1]] = true
    expiring[sums] = true
    written = written + 1
  end
end
for key in pairs(expiring) do
  redis.call("EXPIRE", key, tonumber(ARGV[3]))
end
return written
