-- ack: after a batch committed to MySQL, acknowledge its entries, take their
-- deltas off the pending hash, and trim the stream of what nobody needs.
-- KEYS[1] the shard's pending hash, KEYS[2] the shard's stream
-- ARGV[1] the consumer group, then triples: ARGV[2+3i] entry id,
-- ARGV[3+3i] its counter key, ARGV[4+3i] its delta negated (decimal: what
-- to add to the pending hash; passed as text, Lua numbers lose int64 digits)
-- Returns the number of entries acknowledged by this run.
-- Safe to run twice, and for entries another flusher acknowledged already:
-- a delta leaves the pending hash only when XACK acknowledges its entry now
-- (1), and an entry is acknowledged once.
local group = ARGV[1]
local acked = 0
for i = 2, #ARGV, 3 do
  if redis.call('XACK', KEYS[2], group, ARGV[i]) == 1 then
    acked = acked + 1
    if redis.call('HINCRBY', KEYS[1], ARGV[i + 1], ARGV[i + 2]) == 0 then
      redis.call('HDEL', KEYS[1], ARGV[i + 1])
    end
  end
end

-- Trim below the oldest entry the group still needs: the oldest pending one
-- (delivered, not acknowledged) or else the last delivered one (entries
-- after it were never delivered). MINID, never MAXLEN: before Redis 8.2 a
-- MAXLEN trim deletes pending entries too.
local minid
local summary = redis.call('XPENDING', KEYS[2], group)
if summary[1] > 0 then
  minid = summary[2]
else
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local name, last
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    if name == group then minid = last end
  end
end
if minid then
  redis.call('XTRIM', KEYS[2], 'MINID', minid)
end
return acked
