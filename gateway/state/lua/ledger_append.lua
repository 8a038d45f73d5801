-- Append a batch of usage records to the ledger and add them to their users' sums, once.
--
-- Exactly once, without remembering every record: each gateway process writes its records in
-- batches numbered 1, 2, 3... under its own writer id, one call at a time, and Redis keeps the
-- highest number applied per writer. A call retried after a timeout (Redis may have run it)
-- carries the same batch under the same number and changes nothing. Only a record two replicas
-- may both write — a stream whose progress was saved, whose record another replica writes if
-- this one seems dead — is also marked by its id, and counts only if it was not written yet.
-- Every key shares the {ledger} hash tag: one slot, as Redis Cluster requires of a script.
--
-- KEYS[1] the stream
-- KEYS[2] running streams' saved usage (hash)      KEYS[3] when each was saved (zset)
-- KEYS[4] the highest batch number applied, per writer (hash)
-- KEYS[5 + 2(g-1)..] group g (the records of one user, day and model): the users of its day
--                    (set), its user's sums of the month (hash, fields
--                    "YYYY-MM-DD TAB model TAB measure")
-- KEYS[5 + 2G + (s-1)] saved record s: its id's marker
-- ARGV[1] dedupe_seconds    (how long markers and writers' numbers are kept)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] how long a day's set of users is kept (s)
-- ARGV[4] the writer's id
-- ARGV[5] the batch's number
-- ARGV[6] its records: JSON, one a line (they become one entry, field `r`: an entry per record
--         cost Redis ~2 us per record, one per batch 0.6-0.9 us: see docs/performance.md)
-- ARGV[7] G, the number of groups
-- ARGV[8] the number of records
-- ARGV[9 + 9(g-1)..] group g: user, "YYYY-MM-DD TAB model TAB" (its sum fields' prefix), when its
--                    month's sums expire (Unix seconds: the month's end + the retention; set
--                    when a sum field is created, not at every write), then the sums of its
--                    records but the saved ones: requests, input, cached input, output,
--                    reasoning and total tokens
-- ARGV[9 + 9G + 8(s-1)..] saved record s: its line in ARGV[6] (from 1), id, group, input, cached
--                    input, output, reasoning and total tokens
--
-- Returns the number of records written (0: the batch had been already, or each of its records
-- had: saved records another writer wrote first).

local applied = tonumber(redis.call("HGET", KEYS[4], ARGV[4]) or "0")
local number = tonumber(ARGV[5])
if number <= applied then
  return 0
end
local MEASURES = {"requests", "input_tokens", "cached_input_tokens", "output_tokens",
                  "reasoning_tokens", "total_tokens"}
local dedupe = tonumber(ARGV[1])
local groups = tonumber(ARGV[7])
local sums = {}
for g = 1, groups do
  local a = 9 + 9 * (g - 1)
  sums[g] = {tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]),
             tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])}
end
local skip = {}  -- lines of saved records some writer wrote already
local s, written = 0, tonumber(ARGV[8])
for a = 9 + 9 * groups, #ARGV, 8 do
  local id, sum = ARGV[a + 1], sums[tonumber(ARGV[a + 2])]
  redis.call("HDEL", KEYS[2], id)  -- the stream is over, or its orphan written: its save goes
  redis.call("ZREM", KEYS[3], id)
  if redis.call("SET", KEYS[5 + 2 * groups + s], "1", "NX", "EX", dedupe) then
    sum[1] = sum[1] + 1
    for m = 2, 6 do
      sum[m] = sum[m] + tonumber(ARGV[a + m + 1])
    end
  else
    skip[tonumber(ARGV[a])] = true
    written = written - 1
  end
  s = s + 1
end
local records = ARGV[6]
if next(skip) ~= nil then  -- rare: the batch without the lines another writer wrote
  local kept, at, line = {}, 1, 1
  local size = #records
  while at <= size do
    local stop = string.find(records, "\n", at, true) or size + 1
    if not skip[line] then
      kept[#kept + 1] = string.sub(records, at, stop - 1)
    end
    at, line = stop + 1, line + 1
  end
  records = table.concat(kept, "\n")
end
if written > 0 then
  redis.call("XADD", KEYS[1], "*", "r", records)
  -- entries older than the retention go, approximately (whole nodes)
  local t = redis.call("TIME")
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call("XTRIM", KEYS[1], "MINID", "~", tostring(now - tonumber(ARGV[2])) .. "-0")
end
local ttl = tonumber(ARGV[3])
for g = 1, groups do
  local sum = sums[g]
  if sum[1] > 0 then
    local a = 9 + 9 * (g - 1)
    local users, month, prefix = KEYS[5 + 2 * (g - 1)], KEYS[6 + 2 * (g - 1)], ARGV[a + 1]
    redis.call("SADD", users, ARGV[a])
    redis.call("EXPIRE", users, ttl)
    if redis.call("HINCRBY", month, prefix .. "requests", sum[1]) == sum[1] then
      redis.call("EXPIREAT", month, ARGV[a + 2])  -- a new day or model in the hash
    end
    for m = 2, 6 do
      if sum[m] ~= 0 then
        redis.call("HINCRBY", month, prefix .. MEASURES[m], sum[m])
      end
    end
  end
end
-- Last: a script that failed above leaves the batch number unapplied (its writes before the
-- error stay: Redis does not undo them; the gateway logs the whole batch as dropped).
redis.call("HSET", KEYS[4], ARGV[4], number)
redis.call("EXPIRE", KEYS[4], dedupe)
return written
