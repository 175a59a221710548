-- acquire: grant a fill lease on one entry, or report why not.
-- KEYS[1] entry key
-- ARGV[1] lease token (TokenSize bytes), ARGV[2] lease ms,
-- ARGV[3] mode: '0' miss (grant unless the entry is usable and fresh),
--         '1' replace (the stored payload is corrupt: grant even if usable),
--         '2' refresh (early refresh of a usable entry: grant unless a
--         lease is live or the entry was refilled since the caller read it)
-- ARGV[4] with mode '2': the soft expiry the caller read
-- ARGV[5] the server time (ms) after which the caller no longer waits for
--         this reply ('0': none): run later than that — the request sat in
--         a socket or a queue while its caller gave up — it grants nothing,
--         so that no lease is left that nobody will fill
-- Returns {status, generation, payload, flags, lease remaining ms,
--          delta ms, lease owner, soft expiry ms, server now ms}
--   status 0: granted; 1: the entry is usable and fresh (a fill landed;
--   the payload is returned in mode '0' only); 2: another caller holds a
--   live lease; 3: too late (ARGV[5] passed), nothing granted.
-- Run again with the same token (the client retrying after a lost reply),
-- it finds the lease it granted and grants it again.
local key, token = KEYS[1], ARGV[1]
local now_us, now_ms = now()
local lease = tonumber(ARGV[2])
local mode = ARGV[3]

local e, why = read(key)
local late = tonumber(ARGV[5]) > 0 and now_ms > tonumber(ARGV[5])
if late and not (e and e.lo == token and e.ld > 0) then
  return {3, 0, '', 0, 0, 0, '', 0, now_ms}
end
if not e then
  if why == 'other' then redis.call('DEL', key) end
  e = blank(now_us)
  e.lo, e.ld = token, now_ms + lease
  redis.call('SET', key, header(e), 'PX', lease)
  return {0, e.g, '', 0, lease, 0, '', 0, now_ms}
end

if e.lo == token and e.ld > 0 then
  -- This request already ran and granted the lease: grant it again, as is.
  return {0, e.g, '', e.flags, math.max(e.ld - now_ms, 0), e.d, '', e.s, now_ms}
end
do
  local usable = not has(e.flags, F_INVALIDATED) and (has(e.flags, F_PAYLOAD) or has(e.flags, F_NEGATIVE))
  local fresh = usable and (e.s == 0 or e.s > now_ms)
  if mode == '0' and fresh then
    local p = ''
    if has(e.flags, F_PAYLOAD) then p = payload(key) end
    return {1, e.g, p, e.flags, 0, e.d, '', e.s, now_ms}
  end
  if mode == '2' and e.s ~= tonumber(ARGV[4]) then
    -- Someone refilled the entry since the caller decided to refresh it.
    return {1, e.g, '', e.flags, 0, e.d, '', e.s, now_ms}
  end
  if e.lo ~= '' and e.ld > now_ms then
    return {2, e.g, '', e.flags, e.ld - now_ms, e.d, e.lo, e.s, now_ms}
  end
end
e.lo, e.ld = token, now_ms + lease
redis.call('SETRANGE', key, 0, header(e))
-- The entry lives at least as long as the lease, so that the fill finds
-- it; readers go by the soft expiry, not by the key's life.
local pttl = redis.call('PTTL', key)
if pttl < lease then
  redis.call('PEXPIRE', key, lease)
end
return {0, e.g, '', e.flags, lease, e.d, '', e.s, now_ms}
