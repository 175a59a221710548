-- set: store a value written by the application (Set, WriteThrough).
-- KEYS[1] entry key
-- ARGV[1] payload, ARGV[2] version (19 digits), ARGV[3] key TTL ms,
-- ARGV[4] the value's TTL ms for the soft expiry (0: none), ARGV[5]
-- tombstone ms, ARGV[6] the generation the entry must still have ('0':
-- absent; '': any), read before the write this value comes from began,
-- ARGV[7] the call's token
-- Stores when the version is >= the stored one and the generation is the
-- expected one, voiding any lease so that fills of older loads are
-- rejected. Otherwise the value may be older than what another writer
-- committed and invalidated meanwhile, so the Set turns into an
-- invalidation: the next read loads the truth.
-- Returns 1 stored; 0 refused and invalidated instead. The token stays in
-- the entry: run again (the client retrying after a lost reply), the set
-- answers what it did and changes nothing.
local key, token = KEYS[1], ARGV[7]
local now_us, now_ms = now()

local e, why = read(key)
if not e then
  if why == 'other' then redis.call('DEL', key) end
  e = blank(0)
elseif e.lo == token and e.ld == 0 then
  if has(e.flags, F_INVALIDATED) then return 0 end
  return 1 -- this set already ran
end

local moved = ARGV[6] ~= '' and e.g ~= tonumber(ARGV[6])
e.g = bump(e.g, now_us)
e.lo, e.ld = token, 0
if moved or older(ARGV[2], e.v) then
  e.flags, e.s = with(without(without(e.flags, F_PAYLOAD), F_NEGATIVE), F_INVALIDATED), 0
  redis.call('SET', key, header(e), 'PX', ARGV[5])
  return 0
end

local soft = tonumber(ARGV[4])
e.s = 0
if soft > 0 then e.s = now_ms + soft end
e.flags, e.v = F_PAYLOAD, ARGV[2]
redis.call('SET', key, header(e) .. ARGV[1], 'PX', ARGV[3])
return 1
