-- add: count one delta of a write-behind counter and log it for the flushers.
-- KEYS[1] the shard's pending hash (counter key -> sum of unflushed deltas)
-- KEYS[2] the shard's stream (one entry per counted call: k key, d delta,
--         p the id of the entry before it in the shard)
-- KEYS[3] the shard's chain head (the id of the newest entry; '0-0' when absent)
-- KEYS[4] the shard's token set of the current time bucket
-- KEYS[5] the shard's token set of the previous time bucket
-- (all five share one hash tag: one slot per shard, so this runs on Cluster)
-- ARGV[1] counter key, ARGV[2] delta (decimal int64, not 0), ARGV[3] the
-- call's idempotency token, ARGV[4] the token sets' TTL ms, ARGV[5] the most
-- entries the stream may hold (0: no limit)
-- Returns the new entry's id: counted;
--         0: not counted again, the token was already counted (a retry of a
--            call whose reply was lost runs this twice with the same token);
--         -1: not counted, the stream holds ARGV[5] entries (the flushers are
--            behind: MySQL down or too slow).
-- Nothing is written unless the call is counted, and then everything is.
local tok = ARGV[3]
if redis.call('SISMEMBER', KEYS[4], tok) == 1 or redis.call('SISMEMBER', KEYS[5], tok) == 1 then
  return 0
end
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('XLEN', KEYS[2]) >= limit then
  return -1
end
-- HINCRBY first: it is the only call that can fail (int64 overflow), and a
-- script is not rolled back, so nothing may be written before it.
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
local prev = redis.call('GET', KEYS[3]) or '0-0'
local id = redis.call('XADD', KEYS[2], '*', 'k', ARGV[1], 'd', ARGV[2], 'p', prev)
redis.call('SET', KEYS[3], id)
redis.call('SADD', KEYS[4], tok)
if redis.call('PTTL', KEYS[4]) < 0 then
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return id
