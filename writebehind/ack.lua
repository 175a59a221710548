-- ack: after a batch committed to MySQL, acknowledge its log entries, take
-- their deltas off the pending hash, and trim the log of what nobody needs.
-- KEYS[1] the shard's pending hash, KEYS[2] the shard's log (stream)
-- ARGV[1] the consumer group, then per entry: its id, the number m of its
-- counter keys, and m pairs: a counter key and its delta negated (decimal:
-- what to add to the pending hash; text, since Lua numbers lose int64 digits)
-- Returns the number of entries acknowledged by this run.
-- Safe to run twice, and for entries another flusher acknowledged already:
-- an entry's deltas leave the pending hash only when XACK acknowledges it
-- now (1), and an entry is acknowledged once.
local group = ARGV[1]
local acked = 0
local i = 2
while i <= #ARGV do
  local m = tonumber(ARGV[i + 1])
  local now = redis.call('XACK', KEYS[2], group, ARGV[i]) == 1
  if now then
    acked = acked + 1
  end
  for j = i + 2, i + 2 * m, 2 do
    if now and redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1]) == 0 then
      redis.call('HDEL', KEYS[1], ARGV[j])
    end
  end
  i = i + 2 + 2 * m
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
