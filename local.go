package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/local"
	"github.com/redis/go-redis/v9"
)

// LocalOptions turn on the in-process tier: Get answers a key from this
// process's memory when the tier holds it and the staleness bound allows,
// without a Redis round trip. The tier is fed by Redis itself (CLIENT
// TRACKING on a connection of its own, one per master on a Cluster) and
// trusts its copy only as far as a returned barrier PING proves
// (DESIGN.md, section 9).
//
// WARNING: a value answered from the tier is shared by every Get that hits
// it, for as long as it stays there: treat what T's slices, maps and
// pointers reference as read-only.
type LocalOptions struct {
	// MaxBytes bounds the memory the tier holds: keys, encoded values and
	// a fixed overhead per entry.
	// default: 64 MiB
	MaxBytes int64
	// MaxLag is how stale an answer from the tier may be. With 0 (strict)
	// a Get answers from the tier only after a barrier sent after the Get
	// began has returned: never older than a write completed before the
	// Get began, as from Redis. With Δ > 0 a Get answers from the tier
	// while the last returned barrier was sent less than Δ ago (barriers
	// go out every Δ/2 while the tier is used): a Get that starts more
	// than Δ after an Invalidate, Set or WriteThrough returned, in any
	// process, never sees data older than that write.
	// default: 0 (strict)
	MaxLag time.Duration
	// TTL bounds how long a value stays in the tier; it never stays past
	// the soft expiry of the entry it was read from.
	// default: Options.TTL
	TTL time.Duration
}

// LocalStreamClientName begins the CLIENT SETNAME of every connection an
// in-process tier's invalidation stream opens; the Loader's key prefix
// follows (bytes Redis refuses in a name replaced by '_'). cachectl health
// lists such connections.
const LocalStreamClientName = "cache-local:"

// localSettings are the validated LocalOptions.
type localSettings struct {
	maxBytes uint64
	maxLag   time.Duration
	ttl      time.Duration
	// onBarrier, if set, observes each returned barrier's latency
	// (StreamOptions.OnBarrier).
	onBarrier func(time.Duration)
}

func (o *LocalOptions) settings(valueTTL time.Duration) (*localSettings, error) {
	if o == nil {
		return nil, nil
	}
	if o.MaxBytes < 0 || o.MaxLag < 0 || o.TTL < 0 {
		return nil, fmt.Errorf("cache: Options.Local has a negative field (MaxBytes %d, MaxLag %v, TTL %v)", o.MaxBytes, o.MaxLag, o.TTL)
	}
	return &localSettings{
		maxBytes: uint64(o.MaxBytes),
		maxLag:   o.MaxLag,
		ttl:      or(o.TTL, valueTTL),
	}, nil
}

// localTier is a Loader's in-process tier: its Store and the invalidation
// streams of its Redis masters.
type localTier[T any] struct {
	store  *local.Store[T]
	stream *local.Group
	s      localSettings
	// cluster is the Redis Cluster whose masters the Group follows; nil
	// for a single server.
	cluster *redis.ClusterClient
	stop    context.CancelFunc
	done    chan struct{}
}

// localTopologyEvery is how often a tier on a Redis Cluster asks its
// client for the masters, and reloads the client's slot map.
const localTopologyEvery = time.Second

// newLocalTier starts the tier of the Loader whose keys begin with prefix:
// one stream for a single server (or a Sentinel-managed one), one per
// master on a Redis Cluster (kept in step with the cluster's masters). A
// Ring is refused: its shards are not told of the client's choices.
func newLocalTier[T any](rdb redis.UniversalClient, prefix string, s *localSettings, redisTimeout time.Duration) (*localTier[T], error) {
	store := local.NewStore[T](local.StoreOptions{MaxBytes: s.maxBytes})
	// A strict Get waits for a barrier at most its whole Redis budget (the
	// wait comes first, so that is what it has left).
	opts := local.StreamOptions{Prefixes: []string{prefix}, Sink: store, MaxWait: redisTimeout, Name: LocalStreamClientName + prefix, OnBarrier: s.onBarrier}
	if s.maxLag > 0 {
		opts.Interval = s.maxLag / 2
	}
	t := &localTier[T]{store: store, stream: local.NewGroup(opts), s: *s}
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		if _, err := t.stream.Sync(map[string]*redis.Options{o.Addr: o}); err != nil {
			t.close()
			return nil, fmt.Errorf("cache: Options.Local: %w", err)
		}
	case *redis.ClusterClient:
		t.cluster = c
		ctx, cancel := context.WithCancel(context.Background())
		t.stop, t.done = cancel, make(chan struct{})
		go t.followMasters(ctx)
	default:
		store.Close()
		return nil, errors.New("cache: Options.Local needs a *redis.Client or a *redis.ClusterClient (a Ring is not supported)")
	}
	return t, nil
}

// followMasters keeps the Group's streams those of the cluster's masters,
// as the client knows them, until ctx ends. A failover or a master added
// changes the Group (which flushes the tier); until the Group is whole
// again every Get reads Redis.
func (t *localTier[T]) followMasters(ctx context.Context) {
	defer close(t.done)
	tick := time.NewTicker(localTopologyEvery)
	defer tick.Stop()
	for {
		t.syncMasters(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (t *localTier[T]) syncMasters(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, localTopologyEvery)
	defer cancel()
	var mu sync.Mutex
	masters := map[string]*redis.Options{}
	err := t.cluster.ForEachMaster(cctx, func(_ context.Context, c *redis.Client) error {
		o := c.Options()
		mu.Lock()
		masters[o.Addr] = o
		mu.Unlock()
		return nil
	})
	if err == nil && len(masters) > 0 {
		t.stream.Sync(masters)
	}
	// Asks for a fresh slot map (in the background) for the next round: a
	// master promoted or added shows up in it.
	t.cluster.ReloadState(ctx)
}

// covers reports whether rkey's master, as the client knows it now, is
// streamed: a value read from a master outside the Group (a slot moved
// to a master the tier does not follow yet) must not enter the tier.
func (t *localTier[T]) covers(ctx context.Context, rkey string) bool {
	if t.cluster == nil {
		return true
	}
	c, err := t.cluster.MasterForKey(ctx, rkey)
	return err == nil && t.stream.Has(c.Options().Addr)
}

func (t *localTier[T]) close() {
	if t.stop != nil {
		t.stop()
		<-t.done
	}
	t.stream.Close()
	t.store.Close()
}

// LocalStats are the in-process tier's counters and gauges (Options.Local).
// Its hits are Stats.LocalHits.
type LocalStats struct {
	Entries        int           // entries held (estimate)
	Bytes          uint64        // bytes held, as weighed against MaxBytes
	Fills          uint64        // values read from Redis that entered the tier
	FillsRefused   uint64        // values refused: an invalidation or a stream break came after their read was sent
	Invalidations  uint64        // keys invalidated (by the stream and by this process's writes)
	Messages       uint64        // invalidation messages received from Redis
	Flushes        uint64        // times the tier was emptied: a stream broke, or (on a Cluster) the set of masters changed
	Streams        int           // invalidation streams: 1, or a Cluster's masters as the client knows them
	Up             bool          // every stream is subscribed and a barrier returned on its connection
	Lag            time.Duration // how long ago the last returned barrier was sent (the oldest, over the streams)
	Barriers       uint64        // barrier PINGs sent
	BarrierLatency time.Duration // mean time from a barrier's PING to its return
	BarrierWaits   uint64        // strict checks that waited for a barrier
	WaitsFailed    uint64        // of which the barrier did not return in time, or the stream was down
}

// LocalStats returns the in-process tier's counters; the zero LocalStats
// without Options.Local.
func (l *Loader[T]) LocalStats() LocalStats {
	if l.tier == nil {
		return LocalStats{}
	}
	st, ss := l.tier.store.Stats(), l.tier.stream.Stats()
	ls := LocalStats{
		Entries: st.Entries, Bytes: st.Bytes, Fills: st.Fills, FillsRefused: st.Refused,
		Invalidations: st.Invalidations, Messages: ss.Messages, Flushes: st.Flushes,
		Streams: ss.Masters, Up: ss.Up, Lag: ss.Lag, Barriers: ss.Barriers,
		BarrierWaits: ss.Waits, WaitsFailed: ss.WaitsFailed,
	}
	if ss.Returned > 0 {
		ls.BarrierLatency = time.Duration(ss.BarrierNanos / ss.Returned)
	}
	return ls
}

// localGet answers rkey from the tier if it holds it and the staleness
// bound allows; a strict wait spends from b.
func (l *Loader[T]) localGet(ctx context.Context, b *redisBudget, rkey string) (T, bool) {
	t := l.tier
	if t.s.maxLag > 0 {
		if !t.stream.Fresh(t.s.maxLag) {
			var zero T
			return zero, false
		}
		return t.store.Get(rkey)
	}
	if _, ok := t.store.Get(rkey); !ok {
		var zero T
		return zero, false // no barrier to wait for
	}
	start := time.Now()
	err := t.stream.Wait(ctx) // bounded by MaxWait: the Get's Redis budget
	b.left -= time.Since(start)
	if err != nil {
		var zero T
		return zero, false
	}
	// Looked up again: the barrier may have applied its invalidation.
	return t.store.Get(rkey)
}

// localGetMany answers from the tier the keys it holds, when the
// staleness bound allows (one check for all of them), into res, and
// returns the others. Keys whose invalidation is queued are never
// answered from it.
func (l *Loader[T]) localGetMany(ctx context.Context, b *redisBudget, keys []string, res *manyResult[T]) []string {
	t := l.tier
	if t.s.maxLag > 0 {
		if !t.stream.Fresh(t.s.maxLag) {
			return keys
		}
	} else {
		held := false
		for _, k := range keys {
			if _, ok := t.store.Get(l.Key(k)); ok {
				held = true
				break
			}
		}
		if !held {
			return keys // no barrier to wait for
		}
		start := time.Now()
		err := t.stream.Wait(ctx)
		b.left -= time.Since(start)
		if err != nil {
			return keys
		}
	}
	rest := keys[:0:0]
	for _, k := range keys {
		if !l.retry.pending.has(k) {
			if v, ok := t.store.Get(l.Key(k)); ok {
				l.countIn(ctx, EventLocalHit)
				res.out[k] = v
				continue
			}
		}
		rest = append(rest, k)
	}
	return rest
}

// localFill offers v, read from Redis as e under tk, to the tier.
func (l *Loader[T]) localFill(ctx context.Context, tk local.Ticket, rkey string, v T, e *entry.Entry, now int64) {
	if !l.tier.covers(ctx, rkey) {
		tk = local.Ticket{} // refused, and counted so
	}
	ttl := l.tier.s.ttl
	if e.SoftExpiry > 0 {
		ttl = min(ttl, time.Duration(e.SoftExpiry-now)*time.Millisecond)
	}
	l.tier.store.Fill(tk, rkey, v, len(e.Payload), ttl)
}

// dropLocal drops the keys' copies in this process's tier, so that a
// write returns only once this process can no longer answer the old
// value (other processes learn of it from their streams).
func (l *Loader[T]) dropLocal(keys ...string) {
	if l.tier == nil {
		return
	}
	for _, k := range keys {
		l.tier.store.Invalidate(l.Key(k))
	}
}
