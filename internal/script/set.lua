-- set: store a value written by the application (Set, WriteThrough).
-- KEYS[1] entry key
-- ARGV[1] payload, ARGV[2] version (decimal, >= 0), ARGV[3] key TTL ms,
-- ARGV[4] the value's TTL ms for the soft expiry (0: none), ARGV[5]
-- tombstone ms, ARGV[6] the generation the entry must still have ('0':
-- absent; '': any), read before the write this value comes from began
-- Stores when the version is >= the stored one and the generation is the
-- expected one, voiding any lease so that fills of older loads are
-- rejected. Otherwise the value may be older than what another writer
-- committed and invalidated meanwhile, so the Set turns into an
-- invalidation: the next read loads the truth.
-- Returns 1 stored; 0 refused and invalidated instead.
local key = KEYS[1]

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end

local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- A key that is not an entry (written by something else) is replaced.
local ty = redis.call('TYPE', key)
if type(ty) == 'table' then ty = ty['ok'] end
if ty ~= 'hash' and ty ~= 'none' then
  redis.call('DEL', key)
end

local e = redis.call('HMGET', key, 'v', 'g')
local g = tonumber(e[2] or '0') or 0
local ng = math.max(g + 1, now_us)

local moved = ARGV[6] ~= '' and (e[2] or '0') ~= ARGV[6]
if moved or (e[1] and older(ARGV[2], e[1])) then
  redis.call('HDEL', key, 'p', 'lo', 'ld', 's')
  redis.call('HSET', key, 'f', 2, 'g', int(ng))
  redis.call('PEXPIRE', key, ARGV[5])
  return 0
end

redis.call('HDEL', key, 'f', 'lo', 'ld')
redis.call('HSET', key, 'p', ARGV[1], 'v', ARGV[2], 'g', int(ng))
local soft = tonumber(ARGV[4])
if soft > 0 then
  redis.call('HSET', key, 's', int(now_ms + soft))
else
  redis.call('HDEL', key, 's')
end
redis.call('PEXPIRE', key, ARGV[3])
return 1
