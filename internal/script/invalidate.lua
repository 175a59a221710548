-- invalidate: turn one entry into a tombstone, present or not.
-- KEYS[1] entry key
-- ARGV[1] tombstone ms, ARGV[2] '1' to keep the payload for stale serving,
-- ARGV[3] version floor (decimal; '0': none): the stored version is raised
-- to it, so that no fill or set of an older version lands afterwards
-- Drops any lease (so in-flight fills are rejected), keeps the version (so
-- older writes stay refused) and bumps the generation past both its stored
-- value and the server clock, so it stays monotonic even after the key
-- expired and was created again. A kept payload's soft expiry moves to now
-- at the latest: staleness counts from the invalidation.
local key = KEYS[1]

-- older(a, b): decimal a < decimal b, exact beyond 2^53.
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- A key that is not an entry (written by something else) is replaced.
local ty = redis.call('TYPE', key)
if type(ty) == 'table' then ty = ty['ok'] end
if ty ~= 'hash' and ty ~= 'none' then
  redis.call('DEL', key)
end

local e = redis.call('HMGET', key, 'g', 's', 'p', 'v')
local floor = ARGV[3] or '0'
if floor ~= '0' and (not e[4] or older(e[4], floor)) then
  redis.call('HSET', key, 'v', floor)
end
local g = tonumber(e[1] or '0') or 0
if ARGV[2] == '1' and e[3] then
  local s = tonumber(e[2] or '0') or 0
  if s == 0 or s > now_ms then
    redis.call('HSET', key, 's', int(now_ms))
  end
  redis.call('HDEL', key, 'lo', 'ld')
else
  redis.call('HDEL', key, 'p', 'lo', 'ld', 's')
end
redis.call('HSET', key, 'f', 2, 'g', int(math.max(g + 1, now_us)))
redis.call('PEXPIRE', key, ARGV[1])
return 1
