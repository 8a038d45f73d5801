-- Read what each limiter scope of a user has used, changing nothing (GET /v1/usage).
--
-- KEYS and ARGV as admit.lua takes them, without the admission's own arguments:
-- KEYS[1]            the user's override hash
-- KEYS[2]            the user's pending hash (unused; kept so that keys line up with admit.lua)
-- KEYS[3 + 5(i-1)..] scope i: req zset, tok zset, amt hash, day hash, conc zset
-- ARGV[1] now_ms     "" = Redis TIME
-- ARGV[2] n          number of scopes
-- ARGV[3 + 5(i-1)..] scope i: rpm, tpm, tpd, concurrency (-1 = unlimited), is_user (1/0)
--
-- Returns, for each scope: rpm, requests in the window, tpm, tokens in the window, tpd,
-- tokens today, concurrency, slots held (the limits with the user's overrides applied).

local WINDOW = 60000
local DAY = 86400000
local SLICE = 500

local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local n = tonumber(ARGV[2])
local day = math.floor(now / DAY)
local since = now - WINDOW
local override = redis.call("HMGET", KEYS[1], "rpm", "tpm", "tpd", "conc")

-- The tokens still in the window: the running sum, less reservations that left it but were
-- not evicted yet (eviction happens at the next admission).
local function tokens_in_window(tok, amt)
  local sum = tonumber(redis.call("HGET", amt, "_sum")) or 0
  local offset = 0
  while true do
    local gone = redis.call("ZRANGEBYSCORE", tok, "-inf", "(" .. since, "LIMIT", offset, SLICE)
    if #gone == 0 then
      return sum
    end
    local amounts = redis.call("HMGET", amt, unpack(gone))
    for j = 1, #gone do
      sum = sum - (tonumber(amounts[j]) or 0)
    end
    offset = offset + SLICE
  end
end

local out = {}
for i = 1, n do
  local k = 3 + 5 * (i - 1)
  local a = 3 + 5 * (i - 1)
  local limits = {}
  for j = 1, 4 do
    limits[j] = tonumber(ARGV[a + j - 1])
    if ARGV[a + 4] == "1" and override[j] then
      limits[j] = tonumber(override[j])
    end
  end
  local requests = redis.call("ZCOUNT", KEYS[k], since, "+inf")
  local tokens = tokens_in_window(KEYS[k + 1], KEYS[k + 2])
  local d = redis.call("HMGET", KEYS[k + 3], "day", "used")
  local today = 0
  if tonumber(d[1]) == day then today = tonumber(d[2]) or 0 end
  local slots = redis.call("ZCOUNT", KEYS[k + 4], "(" .. now, "+inf")
  for _, v in ipairs({limits[1], requests, limits[2], tokens, limits[3], today, limits[4], slots}) do
    out[#out + 1] = v
  end
end
return out
