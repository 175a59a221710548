package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/redis/go-redis/v9"
)

// LoadFunc reads the value of key from the source of truth. It returns
// ErrNotFound (or an error wrapping sql.ErrNoRows) when the row does not
// exist. Its ctx carries the values of the Get that started the load but not
// its cancellation; it ends after Options.LoadTimeout.
type LoadFunc[T any] func(ctx context.Context, key string) (T, error)

// Loader is a typed cache-aside view of one kind of row: Get reads through
// Redis to the LoadFunc; Set, Invalidate and WriteThrough keep Redis in step
// with writes. A Loader is safe for concurrent use.
type Loader[T any] struct {
	rdb    redis.UniversalClient
	name   string
	prefix string // Options.Prefix + name + ":"
	load   LoadFunc[T]
	batch  BatchLoadFunc[T] // nil unless built by NewBatch
	s      settings

	stats   counters
	flights flightGroup[T]
	// bypassFlights are the loads of Gets that must not read Redis, kept
	// apart from flights that may answer from it.
	bypassFlights flightGroup[T]
	reads         readGroup
	// seq orders this process's Redis calls and loads; see accepts.
	seq   atomic.Uint64
	clock clock
	// brk is the Loader's circuit breaker around Redis, shared
	// (Options.Breaker) or its own; nil when disabled. breaker is its core
	// breaker, which calls read; member is the Loader's membership.
	brk     *Breaker
	breaker *breaker
	member  *breakerMember
	// readEnd is the last byte an entry read asks for (header and
	// MaxValueBytes+1 of payload), boxed once (see readEntry).
	readEnd any
	// cluster is the per-master state on a Redis Cluster (cluster.go).
	cluster clusterState
	// breakerChanges are the breaker's state changes not yet reported by
	// this Loader.
	breakerChanges breakerChanges

	refreshing sync.Map // keys with a background refresh running
	wakeups    wakeups  // lease waiters woken by fills
	// samplesInFlight counts consistency checks waiting for their delay.
	samplesInFlight atomic.Int64
	readBypass      atomic.Bool
	// retry queues what Redis did not take (invalidations, stores after
	// answering) for retryLoop.
	retry retrier
	bg    background

	// tier is the in-process tier (Options.Local); nil when off.
	tier *localTier[T]
	// localDetach ends the LocalRecorder's reading of the tier's stats;
	// nil without one.
	localDetach func()

	// elapsed is monotonic time since New, for rate limits. Tests replace
	// it (and cluster.reloadState, retry.wait) before the Loader is first
	// used: retryLoop reads them only once woken.
	elapsed func() time.Duration
}

// keyFormat ends a Loader's namespace in its keys: the first '#' of a key
// (neither Prefix nor a name may contain one), then the entry format.
const keyFormat = "#2:"

// New returns a Loader for the rows that load reads. name identifies the
// kind of row: it is part of every Redis key and the loader label of every
// metric. opts may be nil for defaults.
func New[T any](rdb redis.UniversalClient, name string, load LoadFunc[T], opts *Options) (*Loader[T], error) {
	if rdb == nil {
		return nil, errors.New("cache: nil Redis client")
	}
	if name == "" {
		return nil, errors.New("cache: empty loader name")
	}
	if load == nil {
		return nil, errors.New("cache: nil LoadFunc")
	}
	if strings.Contains(name, "#") {
		return nil, fmt.Errorf("cache: loader name %q contains '#', which ends a key's namespace", name)
	}
	if err := checkClient(rdb); err != nil {
		return nil, err
	}
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	if strings.Contains(s.prefix, "#") {
		return nil, fmt.Errorf("cache: Options.Prefix %q contains '#', which ends a key's namespace", s.prefix)
	}
	if s.prevPrefix == s.prefix+name+keyFormat {
		return nil, errors.New("cache: Options.PreviousKeyPrefix is the Loader's own key prefix")
	}
	l := &Loader[T]{
		rdb:    rdb,
		name:   name,
		prefix: s.prefix + name + keyFormat,
		load:   load,
		s:      s,
	}
	l.readEnd = int64(entry.HeaderSize + l.s.maxValueBytes)
	switch {
	case s.breaker != nil:
		if !sameClient(s.breaker.rdb, rdb) {
			return nil, errors.New("cache: Options.Breaker was made for another Redis client: the Loaders sharing a " +
				"Breaker must use the client given to NewBreaker")
		}
		l.brk = s.breaker
	case !s.noBreaker:
		l.brk = newCircuit(rdb, name, s.breakerFails, s.breakerCool)
	}
	if l.brk != nil {
		l.breaker = l.brk.core
	}
	l.cluster.init(rdb, l.brk)
	born := time.Now()
	l.elapsed = func() time.Duration { return time.Since(born) }
	l.retry.init()
	if s.local != nil {
		lr, _ := s.recorder.(LocalRecorder)
		if lr != nil {
			s.local.onBarrier = func(d time.Duration) { lr.ObserveBarrier(name, d) }
		}
		if l.tier, err = newLocalTier[T](rdb, l.prefix, s.local, s.redisTimeout); err != nil {
			return nil, err
		}
		if lr != nil {
			l.localDetach = lr.AttachLocal(name, l.LocalStats)
		}
	}
	l.reads.seed = maphash.MakeSeed()
	l.bg.init()
	l.bg.Go(l.retryLoop)
	if l.brk != nil {
		l.member = &breakerMember{changes: &l.breakerChanges, flush: l.flushOwnBreakerChanges, redisTimeout: s.redisTimeout}
		l.brk.join(l.member)
		l.flushBreakerChanges() // the state of a shared Breaker that is not closed
	}
	return l, nil
}

// NewBatch returns a Loader whose source reads many rows in one call, such
// as one SELECT … WHERE id IN (…): GetMany loads all its misses through it,
// and Get calls it with one key. Otherwise it is New.
//
// A GetMany's misses are loaded under the same rules as Get's, key by key:
// a key already being loaded in this process is joined rather than loaded
// again (unless that load began before an invalidation the GetMany must
// respect); the others take their leases in one pipelined round, load calls
// load once for every key whose lease was granted (and for those Redis could
// not be asked about), and the results are filled in one pipelined round
// with the same versioned, lease-checked fill as Get's. Keys whose lease
// another process holds wait for its fill like Get, each loading alone if
// the wait runs out. Misses are taken 500 at a time: load is never called
// with more keys, and the rounds of one GetMany run concurrently.
//
// Each call of load counts as one load in Stats and in the Recorder's load
// latency; the hits, misses and coalesced waits are counted per key as Get
// counts them. A panic in load fails its keys with a *PanicError and
// releases their leases.
//
// GetMany sends misses through Get's path one at a time, as with New, when
// read bypass is on, for keys whose invalidation is queued, for corrupt
// entries, for values that may be served stale (Options.MaxStale with
// StaleWhileRevalidate or StaleIfError), and for every miss while
// Options.PreviousKeyPrefix is set.
func NewBatch[T any](rdb redis.UniversalClient, name string, load BatchLoadFunc[T], opts *Options) (*Loader[T], error) {
	if load == nil {
		return nil, errors.New("cache: nil BatchLoadFunc")
	}
	l, err := New(rdb, name, loadOneOf(load), opts)
	if err != nil {
		return nil, err
	}
	l.batch = load
	return l, nil
}

// Must returns l, or panics if err is not nil. It is for package-level
// variables: var users = cache.Must(cache.New(...)).
func Must[T any](l *Loader[T], err error) *Loader[T] {
	if err != nil {
		panic(err)
	}
	return l
}

// Key returns the Redis key that holds key's entry.
func (l *Loader[T]) Key(key string) string { return l.prefix + key }

// Name returns the loader's name.
func (l *Loader[T]) Name() string { return l.name }

// Get returns the value of key: from Redis when it holds a usable entry,
// otherwise from one load shared by every concurrent Get of key in this
// process (and, through a lease, in every process). A Get that starts after
// an Invalidate or Set of key returned never returns data loaded before it.
//
// When Redis fails, Get answers from the LoadFunc and returns no Redis
// error. A missing row yields an error matching ErrNotFound.
//
// Concurrent Gets of key may return the same value (one load, or one
// Redis read decoded once, shared between them): treat what T's slices,
// maps and pointers reference as read-only.
func (l *Loader[T]) Get(ctx context.Context, key string) (T, error) {
	if err := l.check(key); err != nil {
		var zero T
		return zero, err
	}
	ctx, sp := l.startOp(ctx, OpGet, key, 1)
	v, _, err := l.get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		err = notFound(l.name, key, err)
	}
	endOp(sp, err)
	return v, err
}

// Stats returns a snapshot of the Loader's counters and state.
func (l *Loader[T]) Stats() Stats {
	s := l.stats.snapshot()
	s.InvalidationsPending = uint64(l.retry.pending.n.Load())
	s.Breaker = l.BreakerState()
	s.ReadBypass = l.readBypass.Load()
	return s
}

// SetReadBypass turns read bypass on or off at run time: while it is on,
// every Get skips Redis and answers from the LoadFunc (one load per key at a
// time in this process), and fills nothing; invalidations and writes still
// go to Redis, so the cache is right when bypass ends. It is the switch for
// an incident where Redis answers but must not be trusted or loaded.
func (l *Loader[T]) SetReadBypass(on bool) {
	if l.readBypass.Swap(on) == on {
		return
	}
	if on {
		l.count(EventReadBypassOn)
		l.s.logger.Warn("cache: read bypass on: Gets skip Redis", "loader", l.name)
	} else {
		l.count(EventReadBypassOff)
		l.s.logger.Info("cache: read bypass off", "loader", l.name)
	}
}

// bypassing reports whether a Get of key must not read Redis: read bypass
// is on, or key's invalidation is still queued.
func (l *Loader[T]) bypassing(key string) bool {
	return l.readBypass.Load() || l.retry.pending.has(key)
}

// checkClient refuses the go-redis clients that ignore context deadlines:
// with them RedisTimeout bounds nothing and a blackholed Redis holds every
// call for the client's ReadTimeout, then retries. Clients of other types
// (wrappers, mocks) are taken as they are.
func checkClient(rdb redis.UniversalClient) error {
	enabled := true
	switch c := rdb.(type) {
	case *redis.Client: // also NewFailoverClient
		enabled = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient: // also NewFailoverClusterClient
		o := c.Options()
		enabled = o.ContextTimeoutEnabled
		if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
			// A replica lags its master: a read sent there after an
			// invalidation returned can find the entry as it was (P3b).
			return errors.New("cache: the cluster client reads from replicas (ReadOnly, RouteByLatency or " +
				"RouteRandomly), which may answer with entries an invalidation already replaced: use a client " +
				"that reads from masters")
		}
	case *redis.Ring:
		enabled = c.Options().ContextTimeoutEnabled
	}
	if !enabled {
		return errors.New("cache: the go-redis client ignores context deadlines, so Options.RedisTimeout " +
			"cannot bound its calls (a blackholed Redis would hold each one for seconds): " +
			"create it with ContextTimeoutEnabled: true in its Options")
	}
	return nil
}

// Close stops the Loader's background work and waits for it: loads whose
// callers have left, and queued invalidations (given one last try, bounded
// by RedisTimeout, even while the circuit breaker is open). The Loader
// leaves a shared Breaker: it reports none of its state changes any more,
// and its prober keeps running for the other members (the last member's
// Close stops it). Methods called after Close return ErrClosed.
func (l *Loader[T]) Close() error {
	l.bg.close(l.wakeups.close)
	if l.member != nil {
		l.brk.leave(l.member)
	}
	if l.tier != nil {
		l.tier.close()
	}
	if l.localDetach != nil {
		l.localDetach()
	}
	return nil
}

func (l *Loader[T]) check(key string) error {
	if key == "" {
		return ErrEmptyKey
	}
	if l.bg.closed() {
		return ErrClosed
	}
	return nil
}

func (l *Loader[T]) count(e Event) {
	l.stats.events[e].Add(1)
	l.s.recorder.Count(l.name, e)
}

// isWrongType reports a Redis WRONGTYPE error: the key holds something
// that is not an entry.
func isWrongType(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "WRONGTYPE")
}

// background runs goroutines that Close waits for.
type background struct {
	mu       sync.Mutex  // protects wg.Add against Close's wg.Wait
	isClosed atomic.Bool // written under mu, read without it
	wg       sync.WaitGroup
	done     chan struct{} // closed by Close
}

func (b *background) init() { b.done = make(chan struct{}) }

// Go runs f on a new goroutine. After Close it still runs f, untracked, so
// that a caller racing with Close is never stranded.
func (b *background) Go(f func()) {
	b.mu.Lock()
	if b.isClosed.Load() {
		b.mu.Unlock()
		go f()
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		f()
	}()
}

func (b *background) closed() bool { return b.isClosed.Load() }

// close marks b closed, signals done, runs stop (which ends goroutines
// that do not watch done), and waits for every tracked goroutine.
func (b *background) close(stop func()) {
	b.mu.Lock()
	if !b.isClosed.Load() {
		b.isClosed.Store(true)
		close(b.done)
	}
	b.mu.Unlock()
	stop()
	b.wg.Wait()
}
