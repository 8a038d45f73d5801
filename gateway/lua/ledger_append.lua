-- Append one usage record to the ledger and add it to the sums, once.
--
-- Idempotent by the record's id: a write retried after a timeout (Redis may have run the
-- first one) finds the id's marker and changes nothing. Every key shares the {ledger} hash
-- tag: one slot, as Redis Cluster requires of a script.
--
-- KEYS[1] the stream        KEYS[2] the id's marker        KEYS[3] the day's sums (hash)
-- KEYS[4] the user's sums of the month (hash)
-- KEYS[5] running streams' saved usage (hash)      KEYS[6] when each was saved (zset)
-- ARGV[1] dedupe_seconds    (how long the marker is kept: longer than any retry)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] sums_ttl_s
-- ARGV[4] the record's id
-- ARGV[5] the record (JSON), stored as the entry's field `r`
-- ARGV[6] "user TAB model TAB", the prefix of the day's sum fields
-- ARGV[7] "YYYY-MM-DD TAB model TAB", the prefix of the user's month sum fields
-- ARGV[8..] measure, amount, measure, amount ... (requests 1, input_tokens N, ...)
--
-- Returns 1 when the record was written, 0 when it already had been.

-- The stream is over (or its orphan is being written): its saved progress goes, either way.
redis.call("HDEL", KEYS[5], ARGV[4])
redis.call("ZREM", KEYS[6], ARGV[4])
if not redis.call("SET", KEYS[2], "1", "NX", "EX", tonumber(ARGV[1])) then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
redis.call("XADD", KEYS[1], "MINID", "~", minid, "*", "r", ARGV[5])
for i = 8, #ARGV, 2 do
  local amount = tonumber(ARGV[i + 1])
  redis.call("HINCRBY", KEYS[3], ARGV[6] .. ARGV[i], amount)
  redis.call("HINCRBY", KEYS[4], ARGV[7] .. ARGV[i], amount)
end
redis.call("EXPIRE", KEYS[3], tonumber(ARGV[3]))
redis.call("EXPIRE", KEYS[4], tonumber(ARGV[3]))
return 1
