-- release: give up a lease without filling (the load failed or the value
-- cannot be cached), so waiters stop waiting at once.
-- KEYS[1] entry key; ARGV[1] lease token; ARGV[2] the channel that wakes
-- waiters on this entry's lease ('': none)
-- Returns 1 released; 0 the lease was not ours. Run again, it answers 1.
local key, token = KEYS[1], ARGV[1]
local e = read(key)
if not e or e.lo ~= token then
  return 0
end
if e.ld == 0 then
  return 1 -- this release already ran
end
e.ld = 0
redis.call('SETRANGE', key, 0, header(e))
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], key)
end
return 1
