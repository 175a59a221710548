-- entry.lua: the entry format (see internal/entry), prepended to every
-- script so that one description of it serves them all.
-- An entry is one string: a 104-byte header of fixed-width ASCII fields,
-- then the payload. Fixed-width decimals compare as strings, so versions
-- stay exact beyond 2^53.
local HDR = 104
local ZERO_VERSION = '0000000000000000000'
local F_NEGATIVE, F_INVALIDATED, F_ROWFLOOR, F_PAYLOAD = 1, 2, 4, 8

local function has(flags, bit) return math.floor(flags / bit) % 2 == 1 end
local function without(flags, bit) if has(flags, bit) then return flags - bit end return flags end
local function with(flags, bit) if has(flags, bit) then return flags end return flags + bit end

-- now returns the server clock in µs and in ms.
local function now()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return us, math.floor(us / 1000)
end

-- read returns the header of the entry at key as a table, or nil and why:
-- 'none' (absent) or 'other' (another type, or a malformed entry; the
-- scripts treat it as absent and replace it). An entry is malformed by the
-- same rules as internal/entry's Decode, so that a script never answers
-- from an entry that a read in Go finds corrupt: a magic, lowercase hex
-- flags and decimal digits only in the numeric fields, a generation, a
-- negative entry without a payload, no bytes after a header without one.
local function read(key)
  local h = redis.pcall('GETRANGE', key, 0, HDR - 1)
  if type(h) == 'table' then return nil, 'other' end
  if h == '' then return nil, 'none' end
  if #h < HDR or not string.match(string.sub(h, 1, 72), '^c2[0-9a-f]%d+$') then return nil, 'other' end
  local e = {
    flags = tonumber(string.sub(h, 3, 3), 16),
    g = tonumber(string.sub(h, 4, 19)),
    v = string.sub(h, 20, 38),
    s = tonumber(string.sub(h, 39, 51)),
    d = tonumber(string.sub(h, 52, 59)),
    ld = tonumber(string.sub(h, 60, 72)),
    lo = string.gsub(string.sub(h, 73, HDR), ' +$', ''),
  }
  if e.g == 0 then return nil, 'other' end
  if has(e.flags, F_PAYLOAD) then
    if has(e.flags, F_NEGATIVE) then return nil, 'other' end
  elseif redis.call('STRLEN', key) > HDR then
    return nil, 'other'
  end
  return e
end

-- blank is the header of a new entry: generation g, nothing else.
local function blank(g)
  return {flags = 0, g = g, v = ZERO_VERSION, s = 0, d = 0, ld = 0, lo = ''}
end

local function header(e)
  return string.format('c2%x%016d%s%013d%08d%013d%-32s', e.flags, e.g, e.v, e.s, e.d, e.ld, e.lo)
end

-- payload returns the payload of the entry at key (read must have found one).
local function payload(key)
  return redis.call('GETRANGE', key, HDR, -1)
end

-- older(a, b): version a < version b (both 19 digits).
local function older(a, b) return a < b end

-- bump returns a generation past g and the clock, so that generations stay
-- monotonic even after the key expired and was created again.
local function bump(g, now_us) return math.max(g + 1, now_us) end
