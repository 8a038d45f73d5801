-- Settle one admitted request: charge its real token usage and free its concurrency slot.
--
-- The reservation made at admission is replaced by the real amount in every scope while it
-- is still in the 60 s window; once it has left (a long request), only what exceeds the
-- reservation is charged, at the current time. The day counter gets the same correction: on
-- the day of admission, or only the excess once a new day has begun.
--
-- What the admission reserved is read from the pending hash, and removed: a settlement runs
-- once, however often it is sent (a retry after a timeout, a compensation for an admission
-- whose answer was lost), and a settlement of an admission that never happened does nothing.
--
-- KEYS[2]            the user's pending hash (KEYS[1], the override hash, is unused: the
--                    scripts take the same keys)
-- KEYS[3 + 5(i-1)..] scope i: req zset, tok zset, amt hash, day hash, conc zset
-- ARGV[1] member     the admission's id
-- ARGV[2] tokens     real usage (what to charge)
-- ARGV[3] now_ms     "" = Redis TIME
-- ARGV[4] n          number of scopes
--
-- Returns 1 when it settled the admission, 0 when there was nothing (left) to settle.

local WINDOW = 60000
local DAY = 86400000

local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local member = ARGV[1]
local tokens = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local today = math.floor(now / DAY)

local held_by = redis.call("HGET", KEYS[2], member)
if not held_by then
  return 0
end
redis.call("HDEL", KEYS[2], member)
local pending = {}
for word in string.gmatch(held_by, "%S+") do
  pending[#pending + 1] = tonumber(word)
end
local admitted_day = pending[1]

for i = 1, n do
  local k = 3 + 5 * (i - 1)
  local tok, amt, dayk, conc = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local reserved = pending[2 * i]
  local extra = tokens - reserved
  local mask = pending[2 * i + 1]
  if mask % 2 == 1 then
    local held = redis.call("HGET", amt, member)
    local at = redis.call("ZSCORE", tok, member)
    if held and (not at or tonumber(at) < now - WINDOW) then
      -- out of the window but not yet evicted: evict it now, as admit.lua would have
      redis.call("ZREM", tok, member)
      redis.call("HDEL", amt, member)
      if tonumber(held) ~= 0 then
        redis.call("HINCRBY", amt, "_sum", -tonumber(held))
      end
      held = nil
    end
    if held then
      redis.call("HSET", amt, member, tokens)
      redis.call("HINCRBY", amt, "_sum", tokens - tonumber(held))
    elseif extra > 0 then
      redis.call("ZADD", tok, now, member)
      redis.call("HSET", amt, member, extra)
      redis.call("HINCRBY", amt, "_sum", extra)
      redis.call("PEXPIRE", tok, WINDOW + 1000)
      redis.call("PEXPIRE", amt, WINDOW + 1000)
    end
  end
  if math.floor(mask / 2) % 2 == 1 then
    local d = tonumber(redis.call("HGET", dayk, "day"))
    if today == admitted_day then
      if d == today and extra ~= 0 then
        redis.call("HINCRBY", dayk, "used", extra)
      end
    elseif extra > 0 then
      if d == today then
        redis.call("HINCRBY", dayk, "used", extra)
      else
        redis.call("HSET", dayk, "day", today, "used", extra)
      end
      redis.call("PEXPIRE", dayk, 2 * DAY)
    end
  end
  if mask >= 4 then
    redis.call("ZREM", conc, member)
  end
end
return 1
