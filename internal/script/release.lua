-- release: give up a lease without filling (the load failed or the value
-- cannot be cached), so waiters stop waiting at once.
-- KEYS[1] entry key; ARGV[1] lease token; ARGV[2] the channel that wakes
-- waiters on this entry's lease ('': none)
-- Returns 1 released; 0 the lease was not ours.
local key = KEYS[1]
if redis.call('HGET', key, 'lo') ~= ARGV[1] then
  return 0
end
redis.call('HDEL', key, 'lo', 'ld')
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], key)
end
return 1
