-- evict: turn an entry that was found to differ from the database into a
-- tombstone, unless it changed since it was read.
-- KEYS[1] entry key
-- ARGV[1] the generation read, ARGV[2] the payload read, ARGV[3] tombstone
-- ms, ARGV[4] '1' when what was read was a negative entry (no payload)
-- Only the exact entry that was compared is evicted: a fill, set or
-- invalidation since then (a new payload or generation) is left alone.
-- Any lease is dropped with the payload, so a fill of the same stale read
-- cannot land. Returns 1 evicted; 0 the entry changed.
local key = KEYS[1]

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end

local e = redis.call('HMGET', key, 'g', 'p')
local same
if ARGV[4] == '1' then
  same = e[1] == ARGV[1] and not e[2]
else
  same = e[1] == ARGV[1] and e[2] == ARGV[2]
end
if not same then
  return 0
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HDEL', key, 'p', 'lo', 'ld', 's')
redis.call('HSET', key, 'f', 2, 'g', int(math.max(tonumber(e[1]) + 1, now_us)))
redis.call('PEXPIRE', key, ARGV[3])
return 1
