-- evict: turn an entry that was found to differ from the database into a
-- tombstone, unless it changed since it was read.
-- KEYS[1] entry key
-- ARGV[1] the generation read, ARGV[2] the payload read, ARGV[3] tombstone
-- ms, ARGV[4] '1' when what was read was a negative entry (no payload),
-- ARGV[5] the call's token
-- Only the exact entry that was compared is evicted: a fill, set or
-- invalidation since then (a new payload or generation) is left alone.
-- Any lease is dropped with the payload, so a fill of the same stale read
-- cannot land. Returns 1 evicted; 0 the entry changed. The token stays in
-- the tombstone: run again, the evict answers 1.
local key, token = KEYS[1], ARGV[5]
local e = read(key)
if not e then
  return 0
end
if e.lo == token and e.ld == 0 and has(e.flags, F_INVALIDATED) then
  return 1 -- this evict already ran
end
if e.g ~= tonumber(ARGV[1]) then
  return 0
end
if ARGV[4] == '1' then
  if has(e.flags, F_PAYLOAD) or not has(e.flags, F_NEGATIVE) then return 0 end
elseif not has(e.flags, F_PAYLOAD) or payload(key) ~= ARGV[2] then
  return 0
end
local now_us = now()
e.g = bump(e.g, now_us)
e.flags = with(without(without(e.flags, F_PAYLOAD), F_NEGATIVE), F_INVALIDATED)
e.lo, e.ld, e.s = token, 0, 0
redis.call('SET', key, header(e), 'PX', ARGV[3])
return 1
