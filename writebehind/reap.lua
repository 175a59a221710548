-- reap: delete the consumers of a shard's group that hold no pending entries
-- and have been idle for long: a flusher that died leaves its name behind
-- (a new process takes a new one), and the names would pile up.
-- KEYS[1] the shard's log (stream)
-- ARGV[1] the consumer group, ARGV[2] the idle time (ms) after which a
-- consumer with nothing pending is deleted, ARGV[3] the caller's own name
-- (never deleted)
-- Returns the number of consumers deleted.
-- Safe: the check and the delete are one atomic step, a consumer with
-- pending entries is never deleted, and a live flusher whose name was
-- deleted gets it back with its next XREADGROUP.
local deleted = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for j = 1, #c, 2 do
    if c[j] == 'name' then name = c[j + 1]
    elseif c[j] == 'pending' then pending = c[j + 1]
    elseif c[j] == 'idle' then idle = c[j + 1] end
  end
  if name ~= ARGV[3] and pending == 0 and idle >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    deleted = deleted + 1
  end
end
return deleted
