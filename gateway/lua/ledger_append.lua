-- Append one usage record to the ledger and add it to the day's sums, once.
--
-- Idempotent by the record's id: a write retried after a timeout (Redis may have run the
-- first one) finds the id's marker and changes nothing. Every key shares the {ledger} hash
-- tag: one slot, as Redis Cluster requires of a script.
--
-- KEYS[1] the stream        KEYS[2] the id's marker        KEYS[3] the day's sums (hash)
-- KEYS[4] the user's sums of the month (hash)
-- ARGV[1] dedupe_seconds    (how long the marker is kept: longer than any retry)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] sums_ttl_s
-- ARGV[4] the record (JSON), stored as the entry's field `r`
-- ARGV[5] "user TAB model TAB", the prefix of the day's sum fields
-- ARGV[6] "YYYY-MM-DD TAB model TAB", the prefix of the user's month sum fields
-- ARGV[7..] measure, amount, measure, amount ... (requests 1, input_tokens N, ...)
--
-- Returns 1 when the record was written, 0 when it already had been.

if not redis.call("SET", KEYS[2], "1", "NX", "EX", tonumber(ARGV[1])) then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
redis.call("XADD", KEYS[1], "MINID", "~", minid, "*", "r", ARGV[4])
for i = 7, #ARGV, 2 do
  local amount = tonumber(ARGV[i + 1])
  redis.call("HINCRBY", KEYS[3], ARGV[5] .. ARGV[i], amount)
  redis.call("HINCRBY", KEYS[4], ARGV[6] .. ARGV[i], amount)
end
redis.call("EXPIRE", KEYS[3], tonumber(ARGV[3]))
redis.call("EXPIRE", KEYS[4], tonumber(ARGV[3]))
return 1
