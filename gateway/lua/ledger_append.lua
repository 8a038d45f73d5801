-- Append usage records to the ledger and add each to its user's sums, once.
--
-- Exactly once, without remembering every record: each gateway process writes its records in
-- order, numbered 1, 2, 3... under its own writer id, and Redis keeps the highest number
-- applied per writer. A call retried after a timeout (Redis may have run it) skips what was
-- applied. Only a record two replicas may both write — a stream whose progress was saved, whose
-- record another replica writes if this one seems dead — is also marked by its id.
-- Every key shares the {ledger} hash tag: one slot, as Redis Cluster requires of a script.
--
-- KEYS[1] the stream
-- KEYS[2] running streams' saved usage (hash)      KEYS[3] when each was saved (zset)
-- KEYS[4] the highest record number applied, per writer (hash)
-- KEYS[5 + 3(i-1)..] record i: its id's marker (any key when its progress was not saved), the
--                    users of its day (set), its user's sums of the month (hash, fields
--                    "YYYY-MM-DD TAB model TAB measure")
-- ARGV[1] dedupe_seconds    (how long markers and writers' numbers are kept)
-- ARGV[2] retention_ms      (stream entries older than this are trimmed, approximately)
-- ARGV[3] how long a day's set of users is kept (s)
-- ARGV[4] the writer's id
-- ARGV[5 + 8(i-1)..] record i: its number, id, the record (JSON, stored as the entry's field
--                    `r`), its tokens "input cached output reasoning total" (so that the JSON
--                    need not be decoded here: that was a fifth of the script's time), user,
--                    "YYYY-MM-DD TAB model TAB" (its sum fields' prefix), when its month's sums
--                    expire (Unix seconds: the month's end + the retention; set when a sum
--                    field is created, not at every write), and "1" when its stream's progress
--                    was saved (else "")
--
-- Returns the number of records written (the others had been already).

local MEASURES = {"input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                  "total_tokens"}
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(now - tonumber(ARGV[2])) .. "-0"
local dedupe = tonumber(ARGV[1])
local applied = tonumber(redis.call("HGET", KEYS[4], ARGV[4]) or "0")
local last = applied
local users, sums = {}, {}  -- key -> member -> true; key -> prefix -> {requests, tokens...}
local expiry = {}  -- sums key -> when it expires
local written = 0
for i = 1, (#KEYS - 4) / 3 do
  local k = 5 + 3 * (i - 1)
  local a = 5 + 8 * (i - 1)
  local number, id = tonumber(ARGV[a]), ARGV[a + 1]
  if number > applied then
    if number > last then last = number end
    local fresh = true
    if ARGV[a + 7] ~= "" then  -- the stream is over, or its orphan written: its save goes
      redis.call("HDEL", KEYS[2], id)
      redis.call("ZREM", KEYS[3], id)
      fresh = redis.call("SET", KEYS[k], "1", "NX", "EX", dedupe)
    end
    if fresh then
      redis.call("XADD", KEYS[1], "*", "r", ARGV[a + 2])
      local members = users[KEYS[k + 1]]
      if not members then
        members = {}
        users[KEYS[k + 1]] = members
      end
      members[ARGV[a + 4]] = true
      local prefixes = sums[KEYS[k + 2]]
      if not prefixes then
        prefixes = {}
        sums[KEYS[k + 2]] = prefixes
        expiry[KEYS[k + 2]] = ARGV[a + 6]
      end
      local total = prefixes[ARGV[a + 5]]
      if not total then
        total = {0, 0, 0, 0, 0, 0}
        prefixes[ARGV[a + 5]] = total
      end
      local input, cached, output, reasoning, all =
        string.match(ARGV[a + 3], "^(%d+) (%d+) (%d+) (%d+) (%d+)$")
      total[1] = total[1] + 1
      total[2] = total[2] + tonumber(input)
      total[3] = total[3] + tonumber(cached)
      total[4] = total[4] + tonumber(output)
      total[5] = total[5] + tonumber(reasoning)
      total[6] = total[6] + tonumber(all)
      written = written + 1
    end
  end
end
if written > 0 then  -- entries older than the retention go, approximately (whole nodes)
  redis.call("XTRIM", KEYS[1], "MINID", "~", minid)
end
-- One command per user and day, and per sum field, however many records share them.
local ttl = tonumber(ARGV[3])
for key, members in pairs(users) do
  for member in pairs(members) do
    redis.call("SADD", key, member)
  end
  redis.call("EXPIRE", key, ttl)
end
for key, prefixes in pairs(sums) do
  for prefix, total in pairs(prefixes) do
    if redis.call("HINCRBY", key, prefix .. "requests", total[1]) == total[1] then
      redis.call("EXPIREAT", key, expiry[key])  -- a new day or model in the hash
    end
    for m = 1, #MEASURES do
      if total[m + 1] ~= 0 then
        redis.call("HINCRBY", key, prefix .. MEASURES[m], total[m + 1])
      end
    end
  end
end
-- Last: a script that failed above (Redis does not undo it) leaves these numbers unapplied.
if last > applied then
  redis.call("HSET", KEYS[4], ARGV[4], last)
  redis.call("EXPIRE", KEYS[4], dedupe)
end
return written
