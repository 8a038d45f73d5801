-- Extend the concurrency leases of a request still running, so that only a dead replica's
-- slots expire.
--
-- KEYS     the conc zsets of the request's scopes
-- ARGV[1]  the admission's id
-- ARGV[2]  lease_ms
-- ARGV[3]  now_ms ("" = Redis TIME)

local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local lease = tonumber(ARGV[2])
for i = 1, #KEYS do
  local expires = redis.call("ZSCORE", KEYS[i], ARGV[1])
  -- an expired lease stays expired, whether or not an admission has swept it yet
  if expires and tonumber(expires) > now then
    redis.call("ZADD", KEYS[i], "XX", now + lease, ARGV[1])
    redis.call("PEXPIRE", KEYS[i], 2 * lease)
  end
end
return 1
