-- invalidate: turn one entry into a tombstone, present or not.
-- KEYS[1] entry key
-- ARGV[1] tombstone ms, ARGV[2] '1' to keep the payload for stale serving,
-- ARGV[3] version floor (19 digits; all zeros: none): the stored version is
-- raised to it, so that no fill or set of an older version lands
-- afterwards, and a negative fill is refused while that floor stands
-- Drops any lease (so in-flight fills are rejected), keeps the version (so
-- older writes stay refused) and bumps the generation past both its stored
-- value and the server clock, so it stays monotonic even after the key
-- expired and was created again. A kept payload's soft expiry moves to now
-- at the latest: staleness counts from the invalidation.
-- Returns 1. Run again, it tombstones the entry again: harmless.
local key = KEYS[1]
local now_us, now_ms = now()
local floor = ARGV[3]

local e, why = read(key)
if not e then
  if why == 'other' then redis.call('DEL', key) end
  e = blank(0)
end
e.g = bump(e.g, now_us)
e.lo, e.ld = '', 0
e.flags = with(without(e.flags, F_NEGATIVE), F_INVALIDATED)
e.flags = without(e.flags, F_ROWFLOOR)
if floor ~= ZERO_VERSION then
  e.flags = with(e.flags, F_ROWFLOOR)
  if older(e.v, floor) then e.v = floor end
end
if ARGV[2] == '1' and has(e.flags, F_PAYLOAD) then
  if e.s == 0 or e.s > now_ms then e.s = now_ms end
  redis.call('SETRANGE', key, 0, header(e))
  redis.call('PEXPIRE', key, ARGV[1])
else
  e.flags, e.s = without(e.flags, F_PAYLOAD), 0
  redis.call('SET', key, header(e), 'PX', ARGV[1])
end
return 1
