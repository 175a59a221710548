-- acquire: grant a fill lease on one entry, or report why not.
-- KEYS[1] entry key
-- ARGV[1] lease token, ARGV[2] lease ms,
-- ARGV[3] mode: '0' miss (grant unless the entry is usable and fresh),
--         '1' replace (the stored payload is corrupt: grant even if usable),
--         '2' refresh (early refresh of a usable entry: grant unless a
--         lease is live or the entry was refilled since the caller read it)
-- ARGV[4] with mode '2': the soft expiry the caller read
-- Returns {status, generation, payload, flags, lease remaining ms,
--          delta ms, lease owner, soft expiry ms, server now ms}
--   status 0: granted; 1: the entry is usable and fresh (a fill landed);
--   2: another caller holds a live lease.
local key = KEYS[1]

-- int formats a number as a decimal integer (tostring would use an exponent).
local function int(n) return string.format('%d', n) end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local lease = tonumber(ARGV[2])
local mode = ARGV[3]

if mode == '1' then
  local ty = redis.call('TYPE', key)
  if type(ty) == 'table' then ty = ty['ok'] end
  if ty ~= 'hash' and ty ~= 'none' then
    redis.call('DEL', key)
  end
end

local e = redis.call('HMGET', key, 'p', 'f', 'g', 'lo', 'ld', 'd', 's')
local p, g, lo = e[1], e[3], e[4]
local f = tonumber(e[2] or '0') or 0
local ld = tonumber(e[5] or '0') or 0
local d = tonumber(e[6] or '0') or 0
local s = tonumber(e[7] or '0') or 0

if g and tonumber(g) then
  g = tonumber(g)
  local invalidated = f % 4 >= 2
  local negative = f % 2 == 1
  local fresh = not invalidated and (p or negative) and (s == 0 or s > now_ms)
  if mode == '0' and fresh then
    return {1, g, p or '', f, 0, d, '', s, now_ms}
  end
  if mode == '2' and s ~= tonumber(ARGV[4]) then
    -- Someone refilled the entry since the caller decided to refresh it.
    return {1, g, p or '', f, 0, d, '', s, now_ms}
  end
  if lo and ld > now_ms then
    return {2, g, p or '', f, ld - now_ms, d, lo, s, now_ms}
  end
  redis.call('HSET', key, 'lo', ARGV[1], 'ld', int(now_ms + lease))
  -- The entry lives at least as long as the lease, so that the fill finds
  -- it; readers go by the soft expiry, not by the key's life.
  local pttl = redis.call('PTTL', key)
  if pttl < lease then
    redis.call('PEXPIRE', key, lease)
  end
  return {0, g, p or '', f, lease, d, '', s, now_ms}
end

if mode == '1' then
  redis.call('DEL', key)
end
redis.call('HSET', key, 'g', int(now_us), 'lo', ARGV[1], 'ld', int(now_ms + lease))
redis.call('PEXPIRE', key, lease)
return {0, now_us, '', 0, lease, 0, '', 0, now_ms}
