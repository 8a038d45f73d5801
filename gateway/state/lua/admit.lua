-- Admit one request against every limiter scope that applies to it, atomically.
--
-- Sliding-window log: each scope keeps the admissions (and token reservations) of the last
-- 60 s, so "at most N in any 60 s" holds exactly, with no burst at a window edge. Tokens per
-- day is a counter for the current UTC day. Concurrency slots are leases that expire on
-- their own if the replica holding them dies.
--
-- KEYS[1]            the user's override hash (its fields replace the user scope's limits)
-- KEYS[2]            the user's pending hash: what each unsettled admission reserved, so that
--                    settle.lua knows what to undo, and does it once
-- KEYS[3 + 5(i-1)..] scope i: req zset, tok zset, amt hash, day hash, conc zset
-- ARGV[1] member     unique id of this admission
-- ARGV[2] tokens     token reservation before capping
-- ARGV[3] now_ms     "" = Redis TIME (always, in the gateway; tests pin the clock)
-- ARGV[4] lease_ms   concurrency lease
-- ARGV[5] n          number of scopes
-- ARGV[6 + 5(i-1)..] scope i: rpm, tpm, tpd, concurrency (-1 = unlimited), is_user (1/0)
--
-- Returns {1, day, need_1, mask_1, ..., need_n, mask_n, lim_req, rem_req, reset_req_ms,
--          lim_tok, rem_tok, reset_tok_ms}  (-1 where no such limit applies); mask_i says
--          what scope i holds for `settle.lua`: 1 tokens per minute, 2 per day, 4 a slot
--      or {0, scope index, limit name, retry_after_ms, limit}
-- A rejection changes no counter: only entries already out of the window are dropped.

local WINDOW = 60000
local DAY = 86400000
-- An entry admitted at t counts while t >= now - WINDOW: it stops counting at t + WINDOW + 1,
-- which is what retry and reset figures say ("+ WINDOW + 1 - now").

local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local member = ARGV[1]
local tokens = tonumber(ARGV[2])
local lease = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local day = math.floor(now / DAY)
local since = now - WINDOW

local override = {}
local fields = redis.call("HMGET", KEYS[1], "rpm", "tpm", "tpd", "conc")
for j = 1, 4 do
  override[j] = fields[j] and tonumber(fields[j]) or nil
end

-- Drop token reservations that left the window, keeping their sum right. In slices: Lua's
-- unpack() refuses a few thousand arguments, and a busy minute leaves many more.
local SLICE = 500
local function evict_tokens(tok, amt)
  while true do
    local gone = redis.call("ZRANGEBYSCORE", tok, "-inf", "(" .. since, "LIMIT", 0, SLICE)
    if #gone == 0 then
      return
    end
    local amounts = redis.call("HMGET", amt, unpack(gone))
    local freed = 0
    for j = 1, #gone do
      freed = freed + (tonumber(amounts[j]) or 0)
    end
    redis.call("HDEL", amt, unpack(gone))
    if freed ~= 0 then  -- Lua writes -0 as "-0", which HINCRBY refuses
      redis.call("HINCRBY", amt, "_sum", -freed)
    end
    redis.call("ZREM", tok, unpack(gone))
  end
end

-- Milliseconds until enough reserved tokens leave the window for `need` more to fit; read in
-- slices, oldest first, stopping as soon as it is known.
local function tokens_retry(tok, amt, sum, need, limit)
  local excess = sum + need - limit
  local freed = 0
  local offset = 0
  while true do
    local entries = redis.call("ZRANGE", tok, offset, offset + SLICE - 1, "WITHSCORES")
    if #entries == 0 then
      return WINDOW
    end
    local members = {}
    for j = 1, #entries, 2 do
      members[#members + 1] = entries[j]
    end
    local amounts = redis.call("HMGET", amt, unpack(members))
    for j = 1, #members do
      freed = freed + (tonumber(amounts[j]) or 0)
      if freed >= excess then
        return tonumber(entries[2 * j]) + WINDOW + 1 - now
      end
    end
    offset = offset + SLICE
  end
end

local scopes = {}
for i = 1, n do
  local k = 3 + 5 * (i - 1)
  local a = 6 + 5 * (i - 1)
  local s = {
    req = KEYS[k], tok = KEYS[k + 1], amt = KEYS[k + 2], dayk = KEYS[k + 3], conc = KEYS[k + 4],
    rpm = tonumber(ARGV[a]), tpm = tonumber(ARGV[a + 1]), tpd = tonumber(ARGV[a + 2]),
    cc = tonumber(ARGV[a + 3]),
  }
  if ARGV[a + 4] == "1" then
    s.rpm = override[1] or s.rpm
    s.tpm = override[2] or s.tpm
    s.tpd = override[3] or s.tpd
    s.cc = override[4] or s.cc
  end
  -- The reservation is capped at the scope's own limit: one request always fits an idle scope.
  s.need = tokens
  if s.tpm >= 0 and s.need > s.tpm then s.need = s.tpm end
  if s.tpd >= 0 and s.need > s.tpd then s.need = s.tpd end
  scopes[i] = s
end

-- Check every scope before changing anything.
for i = 1, n do
  local s = scopes[i]
  if s.rpm >= 0 then
    redis.call("ZREMRANGEBYSCORE", s.req, "-inf", "(" .. since)
    local count = redis.call("ZCARD", s.req)
    if count + 1 > s.rpm then
      local retry = WINDOW
      if s.rpm > 0 then
        local e = redis.call("ZRANGE", s.req, count - s.rpm, count - s.rpm, "WITHSCORES")
        retry = tonumber(e[2]) + WINDOW + 1 - now
      end
      return {0, i, "requests", retry, s.rpm}
    end
    s.req_count = count
  end
  if s.tpm >= 0 then
    evict_tokens(s.tok, s.amt)
    local sum = tonumber(redis.call("HGET", s.amt, "_sum")) or 0
    if sum + s.need > s.tpm or s.tpm == 0 then
      local retry = WINDOW
      if s.tpm > 0 then retry = tokens_retry(s.tok, s.amt, sum, s.need, s.tpm) end
      return {0, i, "tokens", retry, s.tpm}
    end
    s.tok_sum = sum
  end
  if s.tpd >= 0 then
    local d = redis.call("HMGET", s.dayk, "day", "used")
    local used = 0
    if tonumber(d[1]) == day then used = tonumber(d[2]) or 0 end
    if used + s.need > s.tpd or s.tpd == 0 then
      return {0, i, "tokens_per_day", (day + 1) * DAY - now, s.tpd}
    end
    s.day_used = used
  end
  if s.cc >= 0 then
    redis.call("ZREMRANGEBYSCORE", s.conc, "-inf", now)
    if redis.call("ZCARD", s.conc) + 1 > s.cc then
      return {0, i, "concurrency", 1000, s.cc}
    end
  end
end

-- Admit: record the request in every scope.
local result = {1, day}
local best_req, best_tok
for i = 1, n do
  local s = scopes[i]
  if s.rpm >= 0 then
    redis.call("ZADD", s.req, now, member)
    redis.call("PEXPIRE", s.req, WINDOW + 1000)
    local remaining = s.rpm - s.req_count - 1
    if best_req == nil or remaining < best_req[2] then
      local oldest = redis.call("ZRANGE", s.req, 0, 0, "WITHSCORES")
      best_req = {s.rpm, remaining, tonumber(oldest[2]) + WINDOW + 1 - now}
    end
  end
  if s.tpm >= 0 then
    redis.call("ZADD", s.tok, now, member)
    redis.call("HSET", s.amt, member, s.need)
    redis.call("HINCRBY", s.amt, "_sum", s.need)
    redis.call("PEXPIRE", s.tok, WINDOW + 1000)
    redis.call("PEXPIRE", s.amt, WINDOW + 1000)
    local remaining = s.tpm - s.tok_sum - s.need
    if best_tok == nil or remaining < best_tok[2] then
      local oldest = redis.call("ZRANGE", s.tok, 0, 0, "WITHSCORES")
      best_tok = {s.tpm, remaining, tonumber(oldest[2]) + WINDOW + 1 - now}
    end
  end
  if s.tpd >= 0 then
    redis.call("HSET", s.dayk, "day", day, "used", s.day_used + s.need)
    redis.call("PEXPIRE", s.dayk, 2 * DAY)
  end
  if s.cc >= 0 then
    redis.call("ZADD", s.conc, now + lease, member)
    redis.call("PEXPIRE", s.conc, 2 * lease)
  end
  local mask = 0
  if s.tpm >= 0 then mask = mask + 1 end
  if s.tpd >= 0 then mask = mask + 2 end
  if s.cc >= 0 then mask = mask + 4 end
  result[#result + 1] = s.need
  result[#result + 1] = mask
end
-- What settle.lua must undo: "day need_1 mask_1 need_2 mask_2 ...".
local pending = {day}
for i = 1, n do
  pending[#pending + 1] = result[1 + 2 * i]
  pending[#pending + 1] = result[2 + 2 * i]
end
redis.call("HSET", KEYS[2], member, table.concat(pending, " "))
redis.call("PEXPIRE", KEYS[2], 2 * DAY)
best_req = best_req or {-1, -1, -1}
best_tok = best_tok or {-1, -1, -1}
for j = 1, 3 do result[#result + 1] = best_req[j] end
for j = 1, 3 do result[#result + 1] = best_tok[j] end
return result
