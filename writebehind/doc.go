// Package writebehind absorbs counter increments (likes, views, plays) in
// Redis and applies them to MySQL in batches, exactly once, with a stated
// loss bound: write-behind for the one case where it is right, commutative
// counters.
//
// A [Counter] counts: [Counter.Add] adds a delta to a key in one Lua
// script that both sums it into the shard's pending hash and logs it in the
// shard's stream (one hash tag per shard, so every script touches one
// Cluster slot). Concurrent Adds share a round trip: one script run and
// one log entry per shard. A [Flusher] applies: it reads the logs through a
// consumer group, takes over a dead flusher's entries (XAUTOCLAIM), sums
// each batch per key, and in one MySQL transaction calls the user's
// [ApplyFunc] and records the last log entry applied for the shard (the
// applied table, see [Migrate]); then it acknowledges the entries in Redis
// and takes them off the pending hash. [Counter.Get] returns the database
// value (read by [Options].Read, typically through a
// [github.com/f4df6ac3/cache.Loader]) plus the pending deltas.
//
// # Exactly once
//
// Every log entry names the entry before it in its shard (the add script
// keeps the chain head in the same atomic step). A batch applies entries
// only in chain order after the shard's recorded last id, under a FOR
// UPDATE lock of the shard's applied row, and records the new last id in
// the same transaction. So a batch replayed after a crash between commit
// and acknowledgement is skipped, a zombie flusher's stale batch is
// skipped, and two flushers that read interleaved parts of one log apply
// them in order — no shard ownership, no leases.
//
// Retries: go-redis resends a script whose reply was lost (MaxRetries);
// every script run carries a random token remembered for
// [Options].TokenTTL, so the resend is not counted twice. A caller that
// retries an Add that failed should use [Counter.AddOnce] with one token
// for all its attempts (an Add whose reply was lost may have counted).
//
// # Failure semantics
//
// Redis is the only copy of unflushed deltas, so Add does not fail open:
// with Redis unreachable it returns the error and the caller decides —
// drop the increment, retry it, or write it to MySQL directly. A long
// MySQL outage makes the logs grow; [Options].MaxPendingEntries turns that
// into [ErrBacklogFull] before Redis runs out of memory. [New] refuses a
// Redis whose maxmemory-policy may evict keys without a TTL (allkeys-*).
//
// Loss bounds, for deltas Add acknowledged and no flusher applied yet:
//
//   - appendonly yes, appendfsync everysec: a crash of the Redis host
//     loses up to about a second, up to about two when fsync lags. A crash
//     of the redis-server process alone loses nothing while fsync keeps up
//     (the file is written before the reply), and up to about two seconds
//     when it does not (Redis then postpones the write and replies first).
//   - appendfsync always: nothing (each reply follows its fsync).
//   - no persistence: a restart loses every unflushed delta — at most
//     what was counted in the last flush Interval (plus any backlog).
//   - a failover to a replica loses what the replica had not received;
//     [Options].Replicas makes Add WAIT for replicas.
//
// A Flusher notices when Redis lost entries it had already applied (the
// chain restarts) and counts it in [FlusherStats].RedisLosses; what was
// counted and lost before any flush cannot be detected from inside.
//
// WARNING: the exactly-once argument assumes the Redis server's clock does
// not go back past the last applied entry across a restart (stream ids
// are timestamps; after a restart from an older file, new ids must still
// be later than what MySQL recorded). Do not delete log entries or the
// consumer group by hand: a gap in a shard's chain stops that shard's
// flushing, and a recreated group delivers the last acknowledged entry
// again (its delta would leave the pending hash twice; MySQL stays right).
// Changing Options.Shards moves keys between logs: drain first (stop the
// Adds, flush until Pending is 0), then restart everything with the new
// number.
package writebehind
