-- invalidate: turn one entry into a tombstone, present or not.
-- KEYS[1] entry key
-- ARGV[1] tombstone ms
-- Drops the payload and any lease (so in-flight fills are rejected), keeps the
-- version (so older writes stay refused) and bumps the generation past both
-- its stored value and the server clock, so it stays monotonic even after the
-- key expired and was created again.
local key = KEYS[1]

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local g = tonumber(redis.call('HGET', key, 'g') or '0') or 0
redis.call('HDEL', key, 'p', 'lo', 'ld', 's')
redis.call('HSET', key, 'f', 2, 'g', int(math.max(g + 1, now_us)))
redis.call('PEXPIRE', key, ARGV[1])
return 1
