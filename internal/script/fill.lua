-- fill: store a loaded value under a lease.
-- KEYS[1] entry key
-- ARGV[1] lease token, ARGV[2] payload, ARGV[3] version (decimal, >= 0),
-- ARGV[4] '1' for a negative (not found) entry, ARGV[5] key TTL ms (the
-- value's TTL plus how long it may be served stale), ARGV[6] load duration
-- ms, ARGV[7] the value's TTL ms: the soft expiry is set that far ahead
-- (0: none), ARGV[8] the channel that wakes waiters on this entry's lease
-- ('': none; publishing touches no key, so this stays Cluster-safe)
-- Returns 1 stored; 0 rejected, the lease is no longer ours;
--        -1 rejected, the stored version is newer.
local key = KEYS[1]

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end

-- older(a, b): decimal a < decimal b, exact beyond 2^53.
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

local e = redis.call('HMGET', key, 'lo', 'v')
if e[1] ~= ARGV[1] then
  return 0
end
local negative = ARGV[4] == '1'
if not negative and e[2] and older(ARGV[3], e[2]) then
  redis.call('HDEL', key, 'lo', 'ld')
  return -1
end

if negative then
  redis.call('HDEL', key, 'p', 'lo', 'ld')
  redis.call('HSET', key, 'f', 1, 'd', ARGV[6])
else
  redis.call('HDEL', key, 'f', 'lo', 'ld')
  redis.call('HSET', key, 'p', ARGV[2], 'v', ARGV[3], 'd', ARGV[6])
end
local soft = tonumber(ARGV[7])
if soft > 0 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', key, 's', int(now_ms + soft))
else
  redis.call('HDEL', key, 's')
end
redis.call('PEXPIRE', key, ARGV[5])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[8], key)
end
return 1
