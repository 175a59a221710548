// Package cache puts Redis in front of MySQL (or any source of truth) as a
// typed, cache-aside [Loader]: Get reads Redis and, on a miss, runs one load
// per key — per process through a singleflight, and across processes through
// a lease in Redis — and fills the entry with a compare-and-set that can never
// leave an older value behind an invalidation or a newer write.
//
//	users := cache.Must(cache.New(rdb, "user", repo.UserByID, &cache.Options{TTL: time.Minute}))
//	u, err := users.Get(ctx, "42")                    // hit, or one shared load
//	u, err = users.WriteThrough(ctx, "42", func(ctx context.Context) (User, error) {
//		return repo.Rename(ctx, 42, "Ada") // commit, then re-read the row: it is cached
//	})
//	err = users.Invalidate(ctx, "42")                  // after a commit made elsewhere
//
// # Consistency
//
// MySQL is the truth; Redis holds a derived copy. The Loader promises:
//
//   - No stale set: once [Loader.Invalidate] (or [Loader.Set] /
//     [Loader.WriteThrough] of version v) has returned, no load that began
//     before it can store what it read. Invalidate writes a tombstone (even
//     for an absent key) that voids the fill lease of every load in flight.
//   - No stale read: a Get that starts after Invalidate returned never
//     answers with data loaded before it — neither from Redis nor by joining
//     an in-process load that began earlier.
//   - Versions never go backwards: values implementing [Versioned] only
//     replace lower versions. A Set of a lower version invalidates instead.
//   - Fail-open: a Get waits at most Options.RedisTimeout on Redis in total
//     and returns no Redis error: it answers from the LoadFunc. A circuit
//     breaker skips Redis while it keeps failing. Invalidate retries within
//     Options.InvalidateTimeout and then queues what failed (its error wraps
//     [ErrQueued]); Set returns its errors; WriteThrough, whose database
//     write has committed, never fails because of Redis: it falls back to
//     invalidating, then to a background retry. Gets of a key whose
//     invalidation is queued bypass Redis until it lands.
//   - Every Redis script is safe to run twice (go-redis retries a command
//     whose reply was lost) and answers what it answered the first time.
//
// These hold for the writes the Loader is told about. A row changed without
// an Invalidate (a migration, a manual UPDATE) stays stale in Redis until
// its TTL; the TTL is the bound on that.
//
// WARNING: versions must never go backwards for a key, also across delete
// and re-insert: use a sequence or an updated-at in microseconds, read in the
// same SELECT as the value, never time.Now() on an application server.
//
// WARNING: an invalidation queued by WriteThrough lives in process memory.
// If the process dies before Redis comes back, the entry stays stale until
// its TTL.
//
// # Redis layout
//
// One string per entry at Options.Prefix + name + "#2:" + key: a small
// fixed-size header (flags, an invalidation generation, the version, the
// soft expiry, the last load's duration and the fill lease) followed by the
// encoded value. Every script touches one key, so Redis Cluster works
// without hash tags. A hit is one GETRANGE, bounded by
// Options.MaxValueBytes, and no Lua. DESIGN.md in the repository describes
// the layout, the scripts and the read and write paths.
//
// # Hot keys and stale serving
//
// A hit close to its expiry refreshes the entry in the background with a
// probability that rises as expiry nears, scaled by how long the last load
// took (XFetch), so a hot key does not fall off a cliff when it expires.
// Opt-in: Options.StaleWhileRevalidate serves expired or invalidated values
// (at most Options.MaxStale old) while one refresh runs, and
// Options.StaleIfError serves them when the load fails.
// [Loader.SetReadBypass] turns Redis reads off at run time.
//
// # Under load
//
// Concurrent Gets of one key share Redis reads — a Get only shares a read
// sent after it arrived, so the no-stale-read promise holds — and the
// decoding of the reply; concurrent Gets of different keys are written to
// Redis as pipelines while earlier reads are in flight (a lone Get sends
// its own read at once). Concurrent Gets of a key may therefore return the
// same value: treat what it references as read-only.
// [Loader.GetMany] reads many keys in one pipelined round trip; with
// [NewBatch] its misses are loaded by one call (e.g. WHERE id IN (…)),
// their leases and fills pipelined. A *redis.ClusterClient works as is.
//
// # In-process tier
//
// Options.Local ([LocalOptions]) puts a byte-bounded copy of recently read
// values in process memory, kept in step by Redis (CLIENT TRACKING on a
// connection of its own) and trusted only as far as a returned barrier
// PING proves: strict (no answer older than a write completed before the
// Get began) or bounded by MaxLag. Get and GetMany use it, on a single
// Redis or a Cluster (a connection per master). Values from it are shared between Gets for as long
// as they stay there: treat what they reference as read-only.
//
// # Operating it
//
// [Loader.Reconcile] finds and evicts entries that differ from the database
// (what invalidations missed); Options.SampleRate measures that disagreement
// on live traffic. Options.PreviousKeyPrefix keeps the hit rate through a
// key-format change, and [Loader.Warm] fills a set of keys ahead of traffic.
// Package outbox makes invalidations durable across process crashes;
// cmd/cachectl inspects entries from a shell.
//
// Options.Recorder receives the metrics ([NewPrometheus] exports them);
// Options.Tracer, a [Tracer], follows each operation in its context for
// distributed tracing — module otelcache implements both with
// OpenTelemetry.
//
// # Go-redis configuration
//
// Build the client with ContextTimeoutEnabled: true; New refuses go-redis
// clients without it, since they ignore the deadlines that bound every call
// (with go-redis defaults a blackholed Redis holds a call for its
// ReadTimeout, 3s, and retries).
package cache
