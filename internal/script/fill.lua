-- fill: store a loaded value under a lease.
-- KEYS[1] entry key
-- ARGV[1] lease token, ARGV[2] payload, ARGV[3] version (19 digits),
-- ARGV[4] '1' for a negative (not found) entry, ARGV[5] key TTL ms (the
-- value's TTL plus how long it may be served stale), ARGV[6] load duration
-- ms, ARGV[7] the value's TTL ms: the soft expiry is set that far ahead
-- (0: none), ARGV[8] the channel that wakes waiters on this entry's lease
-- ('': none; publishing touches no key, so this stays Cluster-safe)
-- Returns 1 stored; 0 rejected, the lease is no longer ours;
--        -1 rejected, the stored version is newer (or, for a negative
--        entry, the row is known to exist).
-- The token stays in the entry with no deadline: run again (the client
-- retrying after a lost reply), the fill answers what it did and changes
-- nothing.
local key, token = KEYS[1], ARGV[1]
local e = read(key)
if not e or e.lo ~= token then
  return 0
end
local negative = ARGV[4] == '1'
local refused = (not negative and older(ARGV[3], e.v)) or (negative and has(e.flags, F_ROWFLOOR))
if e.ld == 0 then
  -- This fill already ran: it stored, unless it was refused.
  if refused or (negative and not has(e.flags, F_NEGATIVE)) then return -1 end
  return 1
end
if refused then
  e.ld = 0 -- the token stays: this fill is done
  redis.call('SETRANGE', key, 0, header(e))
  return -1
end

local _, now_ms = now()
local soft = tonumber(ARGV[7])
e.s = 0
if soft > 0 then e.s = now_ms + soft end
e.d = math.min(tonumber(ARGV[6]), 99999999) -- 8 digits: about 27 hours
e.ld = 0 -- the token stays: this fill is done
local p = ''
if negative then
  e.flags = F_NEGATIVE
else
  e.flags, e.v, p = F_PAYLOAD, ARGV[3], ARGV[2]
end
redis.call('SET', key, header(e) .. p, 'PX', ARGV[5])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[8], key)
end
return 1
