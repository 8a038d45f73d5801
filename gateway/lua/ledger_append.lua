-- Append one usage record to the ledger and add it to the day's aggregates, once.
--
-- Idempotent by the record's id: a write retried after a timeout (Redis may have run the
-- first one) finds the id's marker and changes nothing. Every key shares the {ledger} hash
-- tag: one slot, as Redis Cluster requires of a script.
--
-- KEYS[1] the stream        KEYS[2] the id's marker        KEYS[3] the day's aggregates hash
-- ARGV[1] dedupe_seconds    (how long the marker is kept: longer than any retry)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] aggregate_ttl_s   ARGV[4] n_fields (record field/value pairs that follow)
-- ARGV[5 .. 4 + 2n]         the record, field value field value ...
-- ARGV[5 + 2n ..]           aggregate increments: hash field, amount, hash field, amount ...
--
-- Returns 1 when the record was written, 0 when it already had been.

if not redis.call("SET", KEYS[2], "1", "NX", "EX", tonumber(ARGV[1])) then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[4])
local entry = {}
for i = 5, 4 + 2 * n do
  entry[#entry + 1] = ARGV[i]
end
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
redis.call("XADD", KEYS[1], "MINID", "~", minid, "*", unpack(entry))
for i = 5 + 2 * n, #ARGV, 2 do
  redis.call("HINCRBY", KEYS[3], ARGV[i], tonumber(ARGV[i + 1]))
end
redis.call("EXPIRE", KEYS[3], tonumber(ARGV[3]))
return 1
