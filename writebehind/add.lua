-- add: count deltas of a write-behind counter and log them for the flushers,
-- as one entry of the shard's log.
-- KEYS[1] the shard's pending hash (counter key -> sum of unflushed deltas)
-- KEYS[2] the shard's log, a stream: one entry per run of this script, with
--         fields p (the id of the entry before it in the shard: the chain
--         the flushers follow), n (the calls of Add it holds) and, per
--         counter key, '+' .. key -> delta
-- KEYS[3] the shard's chain head (the id of its newest entry; '0-0' when absent)
-- KEYS[4] the shard's token set of the current time bucket
-- KEYS[5] the shard's token set of the previous time bucket (KEYS[4] again
--         when only the current one needs checking: a random token, whose
--         resends carry these very keys)
-- (all five share one hash tag: one slot per shard, so this runs on Cluster)
-- ARGV[1] the run's idempotency token (one AddOnce call's, or a random one
-- for a batch of Add calls), ARGV[2] the token sets' TTL ms, ARGV[3] the most
-- entries the log may hold (0: no limit), ARGV[4] the number of calls the run
-- carries, then pairs: ARGV[5+2i] a counter key (distinct), ARGV[6+2i] its
-- delta (decimal int64)
-- Returns the new entry's id: counted;
--         0: not counted again, the token was counted before (go-redis resends
--            a script whose reply was lost; an AddOnce retry resends its token);
--         -1: not counted, the log holds ARGV[3] entries (the flushers are
--            behind: MySQL down or too slow).
-- Nothing is written unless the run counts, and then all of it is (but see
-- HINCRBY below).
local tok = ARGV[1]
if redis.call('SISMEMBER', KEYS[4], tok) == 1 or
    (KEYS[5] ~= KEYS[4] and redis.call('SISMEMBER', KEYS[5], tok) == 1) then
  return 0
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('XLEN', KEYS[2]) >= limit then
  return -1
end
local fields = {'p', redis.call('GET', KEYS[3]) or '0-0', 'n', ARGV[4]}
for i = 5, #ARGV, 2 do
  -- A sum past int64 fails here, and a script is not rolled back: pairs
  -- before it stay in the pending hash (never in the log). Counters do not
  -- get there.
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  fields[#fields + 1] = '+' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('SET', KEYS[3], id)
redis.call('SADD', KEYS[4], tok)
if redis.call('PTTL', KEYS[4]) < 0 then
  redis.call('PEXPIRE', KEYS[4], ARGV[2])
end
return id
