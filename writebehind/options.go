package writebehind

import (
	"context"
	"database/sql"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ReadFunc reads a counter's flushed value from the database (directly or
// through a cache such as a [github.com/f4df6ac3/cache.Loader]); Get adds
// the deltas not yet flushed to it.
type ReadFunc func(ctx context.Context, key string) (int64, error)

// ApplyFunc applies one batch of deltas to the database inside tx, the
// transaction that also records which log entries the batch covers. It
// must not commit or roll back tx. Each key appears once in batch (its
// deltas summed); the batch is sorted by key. An error (or a panic) rolls
// the whole batch back; it is retried later.
type ApplyFunc func(ctx context.Context, tx *sql.Tx, batch []Delta) error

// Delta is the sum of the unflushed deltas of one counter key in a batch.
type Delta struct {
	Key   string
	Delta int64
}

// Options configure a Counter. A nil *Options means all defaults.
type Options struct {
	// Prefix starts every Redis key of the counter. It may not contain
	// '{' or '}': the counter puts its own hash tag after it.
	// default: "wb:"
	Prefix string

	// Shards is how many logs (each a stream with its pending hash, in one
	// hash slot) the counter's keys are spread over. More shards spread
	// the counter over Cluster nodes and let several flushers apply at
	// once (one transaction per shard at a time). Fewer shards make the
	// writes cheaper: concurrent Adds share one script run per shard per
	// round trip (measured with 128 concurrent callers, three runs: 1
	// shard 20-26×, 4 shards 15-17×, 16 shards 8-10× the increments/s of
	// direct UPDATEs; see README.md). On Cluster use at least as many as
	// there are masters.
	// Every Counter and Flusher of one name must use the same number.
	// default: 1
	Shards int

	// TokenTTL is how long a script run's idempotency token is
	// remembered: a resend of the same run (go-redis resends a script
	// whose reply was lost; AddOnce callers retry with their token) within
	// it is not counted twice. Tokens cost Redis memory: about 50 bytes
	// per run (one AddOnce, or one shard's share of a batch of Adds) for
	// between one and two TokenTTLs.
	// default: 1m
	TokenTTL time.Duration

	// MaxPendingEntries bounds each shard's log: once it holds that many
	// unflushed entries (an entry is one round trip's calls for the shard,
	// one AddOnce, or a batch of concurrent Adds), Add returns
	// ErrBacklogFull instead of counting, so that a long MySQL outage ends
	// in errors the caller sees rather than in Redis running out of memory.
	// default: 0 (no bound)
	MaxPendingEntries int

	// Replicas, when positive, makes every Add wait (Redis WAIT) until that
	// many replicas have its write, at most ReplicaTimeout. An Add that
	// reached fewer returns an error wrapping ErrNotReplicated, although
	// it was counted. Needs a *redis.Client (a single server or a
	// Sentinel failover client); New refuses it for other clients.
	// default: 0 (no WAIT)
	Replicas int

	// ReplicaTimeout bounds the WAIT of Replicas.
	// default: 100ms
	ReplicaTimeout time.Duration

	// WriteTimeout bounds one round trip carrying queued Add calls (a
	// caller leaves earlier on its own context, not knowing whether its
	// call was counted). It only bounds a blocked read if the client has
	// ContextTimeoutEnabled; otherwise the client's ReadTimeout does.
	// default: 5s
	WriteTimeout time.Duration

	// Read reads a key's flushed value for Get.
	// default: nil (Get returns ErrNoRead; Pending still works)
	Read ReadFunc

	// SkipPolicyCheck skips New's CONFIG GET maxmemory-policy, for servers
	// that refuse CONFIG (managed Redis). Then nothing stops an evicting
	// policy from deleting unflushed deltas: check it yourself.
	// default: false (New refuses allkeys-* policies and fails if it
	// cannot read the policy)
	SkipPolicyCheck bool

	// Registerer, when set, receives the counter's Prometheus metrics (see
	// metrics.go). Counters and flushers may share one registry.
	// default: nil (Stats only)
	Registerer prometheus.Registerer
}

// FlusherOptions configure a Flusher. A nil *FlusherOptions means all
// defaults.
type FlusherOptions struct {
	// Table is the MySQL table recording, per counter and shard, the last
	// log entry applied (create it with Migrate). The record is written in
	// the transaction that applies the batch: that is what makes a replay
	// after a crash harmless.
	// default: DefaultTable ("writebehind_applied")
	Table string

	// Group is the stream consumer group the flushers of this counter
	// share.
	// default: "flushers"
	Group string

	// Consumer is this flusher's name in the group. A flusher restarted
	// under its old name resumes its own pending entries at once; under a
	// new one, they are claimed after ClaimIdle.
	// default: host name, process id and a random part
	Consumer string

	// BatchSize is the most log entries one transaction applies, per
	// shard. An entry is one AddOnce or one round trip's Adds for the
	// shard (up to 1,000 keys, summed).
	// default: 10000
	BatchSize int

	// Interval is how long Run waits between passes, unless a pass found a
	// full batch. It is about how long a delta waits in Redis before it is
	// flushed, and it sets the write reduction: a key's increments within
	// one Interval become one row write.
	// default: 1s
	Interval time.Duration

	// ClaimIdle is how long an entry delivered to another flusher may stay
	// unacknowledged before this one claims it (XAUTOCLAIM): the time a
	// dead flusher's entries wait. Claiming from a live but slow flusher
	// is safe, only wasted work. Consumers idle for 10 × ClaimIdle with
	// nothing pending (dead flushers' names) are deleted from the group.
	// default: 30s
	ClaimIdle time.Duration

	// WARNING: database/sql's Tx.Commit takes no context, so ApplyTimeout
	// cannot end a COMMIT that MySQL never answers (a blackholed server):
	// give the DSN a readTimeout (and writeTimeout), e.g. "?readTimeout=5s",
	// or the flusher waits on it for as long as TCP does.
	// ApplyTimeout bounds one batch's transaction (Apply included). A
	// flusher that hangs inside a batch holds its shard's applied row
	// locked (the other flushers of that shard wait) for at most this long.
	// default: 30s
	ApplyTimeout time.Duration

	// MinBackoff is Run's first wait after a failed pass (MySQL or Redis
	// down); each further failure doubles it up to MaxBackoff. Waits are
	// jittered to between half and all of the value.
	// default: 100ms
	MinBackoff time.Duration

	// MaxBackoff bounds Run's wait between failed passes.
	// default: 5s
	MaxBackoff time.Duration

	// StatsInterval is how often Run refreshes the Pending and Lag gauges
	// (a few commands per shard). FlushOnce always does.
	// default: 1s
	StatsInterval time.Duration

	// OnFlushed, when set, is called after a batch committed and its
	// entries were acknowledged, with the keys it changed: the place to
	// invalidate cached database values (a Loader's Invalidate). An error
	// is logged and counted; the batch stays flushed.
	// default: nil
	OnFlushed func(ctx context.Context, batch []Delta) error

	// Registerer, when set, receives the flusher's Prometheus metrics.
	// default: nil (Stats only)
	Registerer prometheus.Registerer

	// Logger receives failed passes and detected Redis data loss; never
	// keys.
	// default: discards everything
	Logger *slog.Logger
}
