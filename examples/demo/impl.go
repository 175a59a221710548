package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// users is one process's cache of the users table, as the workload sees
// it. Every implementation shares the store, Redis and the key layout.
type users interface {
	// Get reads a user through the long-TTL cache.
	Get(ctx context.Context, id string) (User, error)
	// GetHot reads a user through a cache with a short TTL (the hot key
	// phase), so that it expires several times during the phase.
	GetHot(ctx context.Context, id string) (User, error)
	// Rename updates the row and keeps the cache in step.
	Rename(ctx context.Context, id, name string) (User, error)
	// Evict deletes the user's cache entry from Redis, as an expiry or an
	// eviction under maxmemory would.
	Evict(ctx context.Context, id string) error
	// Hits is how many Gets were answered by the cache so far: by Redis,
	// or by process memory for the in-process tier.
	Hits() uint64
	// Breaker is the state of the Redis circuit breaker ("-" if none).
	Breaker() string
	// Counts is what the library counted so far (zero for the textbook
	// version, which counts nothing but hits).
	Counts() libCounts
	Close()
}

// libCounts are the library's counters the sentences cite, summed over a
// process's Loaders. Phases report differences of two snapshots.
type libCounts struct {
	Coalesced           int64 // Gets that waited on a load of their own process
	LeaseWaits          int64 // loads that waited on another process's lease
	StaleSetsPrevented  int64 // fills rejected because a write came after their read
	Refreshes           int64 // background refreshes before expiry
	RedisSkipped        int64 // Redis calls not made: the breaker was open
	RedisErrors         int64 // failed Redis calls
	InvalidationsQueued int64 // write invalidations queued for retry: Redis did not take them
	BreakerOpened       int64 // times the breaker opened
	BreakerClosed       int64 // times it closed again
	// The in-process tier's (zero without it).
	LocalHits    int64 // Gets answered from process memory
	LocalFills   int64 // values read from Redis that entered the tier
	BarrierWaits int64 // strict Gets that waited for a barrier PING
	WaitsFailed  int64 // of which the barrier did not return in time, or the stream was down (the Get read Redis)
	StreamBreaks int64 // invalidation stream breaks, each of which emptied the tier
}

func countsOf(s cache.Stats, ls cache.LocalStats) libCounts {
	return libCounts{
		Coalesced:           int64(s.Coalesced),
		LeaseWaits:          int64(s.LeaseWaits),
		StaleSetsPrevented:  int64(s.StaleSetsPrevented),
		Refreshes:           int64(s.Refreshes),
		RedisSkipped:        int64(s.RedisSkipped),
		RedisErrors:         int64(s.RedisErrors),
		InvalidationsQueued: int64(s.InvalidationsQueued),
		BreakerOpened:       int64(s.BreakerOpened),
		BreakerClosed:       int64(s.BreakerClosed),
		LocalHits:           int64(s.LocalHits),
		LocalFills:          int64(ls.Fills),
		BarrierWaits:        int64(ls.BarrierWaits),
		WaitsFailed:         int64(ls.WaitsFailed),
		StreamBreaks:        int64(ls.Flushes),
	}
}

func (c libCounts) add(o libCounts) libCounts {
	return libCounts{
		Coalesced:           c.Coalesced + o.Coalesced,
		LeaseWaits:          c.LeaseWaits + o.LeaseWaits,
		StaleSetsPrevented:  c.StaleSetsPrevented + o.StaleSetsPrevented,
		Refreshes:           c.Refreshes + o.Refreshes,
		RedisSkipped:        c.RedisSkipped + o.RedisSkipped,
		RedisErrors:         c.RedisErrors + o.RedisErrors,
		InvalidationsQueued: c.InvalidationsQueued + o.InvalidationsQueued,
		BreakerOpened:       c.BreakerOpened + o.BreakerOpened,
		BreakerClosed:       c.BreakerClosed + o.BreakerClosed,
		LocalHits:           c.LocalHits + o.LocalHits,
		LocalFills:          c.LocalFills + o.LocalFills,
		BarrierWaits:        c.BarrierWaits + o.BarrierWaits,
		WaitsFailed:         c.WaitsFailed + o.WaitsFailed,
		StreamBreaks:        c.StreamBreaks + o.StreamBreaks,
	}
}

// since is c minus an earlier snapshot o.
func (c libCounts) since(o libCounts) libCounts {
	return libCounts{
		Coalesced:           c.Coalesced - o.Coalesced,
		LeaseWaits:          c.LeaseWaits - o.LeaseWaits,
		StaleSetsPrevented:  c.StaleSetsPrevented - o.StaleSetsPrevented,
		Refreshes:           c.Refreshes - o.Refreshes,
		RedisSkipped:        c.RedisSkipped - o.RedisSkipped,
		RedisErrors:         c.RedisErrors - o.RedisErrors,
		InvalidationsQueued: c.InvalidationsQueued - o.InvalidationsQueued,
		BreakerOpened:       c.BreakerOpened - o.BreakerOpened,
		BreakerClosed:       c.BreakerClosed - o.BreakerClosed,
		LocalHits:           c.LocalHits - o.LocalHits,
		LocalFills:          c.LocalFills - o.LocalFills,
		BarrierWaits:        c.BarrierWaits - o.BarrierWaits,
		WaitsFailed:         c.WaitsFailed - o.WaitsFailed,
		StreamBreaks:        c.StreamBreaks - o.StreamBreaks,
	}
}

// Implementations selectable with -impl.
const (
	implLibrary = "cache"
	implNaive   = "naive"
	implTier    = "tier"
)

// allImpls are the implementations -impl all runs, in order.
var allImpls = []string{implLibrary, implNaive, implTier}

// parseImpls reads -impl: "all", "both" (cache and naive, as before the
// tier existed), or a comma-separated list of implementations.
func parseImpls(s string) ([]string, error) {
	switch s {
	case "all":
		return slices.Clone(allImpls), nil
	case "both":
		return []string{implLibrary, implNaive}, nil
	}
	var impls []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(allImpls, name) {
			return nil, fmt.Errorf("-impl %q: want all, both (cache and naive), or a comma-separated list of %s", s, strings.Join(allImpls, ", "))
		}
		if !slices.Contains(impls, name) {
			impls = append(impls, name)
		}
	}
	return impls, nil
}

const (
	longTTL = time.Minute
	hotTTL  = 300 * time.Millisecond
)

// library is this library: one Loader per cache, with default options
// apart from the TTLs, and, for the tier implementation, Options.Local.
type library struct {
	rdb       *redis.Client
	db        *store
	user, hot *cache.Loader[User]
}

func newLibrary(rdb *redis.Client, db *store, prefix string) (users, error) {
	return newLibraryWith(rdb, db, prefix, nil)
}

// tierOptions are the tier implementation's Options.Local: strict (MaxLag
// 0), the other fields at their defaults.
func tierOptions() *cache.LocalOptions { return &cache.LocalOptions{} }

// newTier is this library with its in-process tier (tierOptions).
func newTier(rdb *redis.Client, db *store, prefix string) (users, error) {
	return newLibraryWith(rdb, db, prefix, tierOptions())
}

func newLibraryWith(rdb *redis.Client, db *store, prefix string, local *cache.LocalOptions) (users, error) {
	user, err := cache.New(rdb, "user", db.get, &cache.Options{Prefix: prefix, TTL: longTTL, Local: local})
	if err != nil {
		return nil, err
	}
	hot, err := cache.New(rdb, "hot", db.get, &cache.Options{Prefix: prefix, TTL: hotTTL, Local: local})
	if err != nil {
		user.Close()
		return nil, err
	}
	return &library{rdb: rdb, db: db, user: user, hot: hot}, nil
}

func (l *library) Get(ctx context.Context, id string) (User, error)    { return l.user.Get(ctx, id) }
func (l *library) GetHot(ctx context.Context, id string) (User, error) { return l.hot.Get(ctx, id) }

// Rename commits the update and stores the new row in Redis, or
// invalidates the key when another write came in between (queued and
// retried if Redis is unreachable).
func (l *library) Rename(ctx context.Context, id, name string) (User, error) {
	return l.user.WriteThrough(ctx, id, func(ctx context.Context) (User, error) {
		return l.db.rename(ctx, id, name)
	})
}

func (l *library) Evict(ctx context.Context, id string) error {
	return l.rdb.Del(ctx, l.user.Key(id)).Err()
}

func (l *library) Hits() uint64 {
	u, h := l.user.Stats(), l.hot.Stats()
	return u.Hits + u.LocalHits + h.Hits + h.LocalHits
}
func (l *library) Breaker() string { return l.user.BreakerState().String() }
func (l *library) Counts() libCounts {
	return countsOf(l.user.Stats(), l.user.LocalStats()).add(countsOf(l.hot.Stats(), l.hot.LocalStats()))
}

// streamsUp reports whether both Loaders' invalidation streams are up
// (always false without the tier).
func (l *library) streamsUp() bool { return l.user.LocalStats().Up && l.hot.LocalStats().Up }
func (l *library) Close()          { l.user.Close(); l.hot.Close() }

// naive is textbook cache-aside, as most services write it: GET; on a miss
// SELECT and SET EX; on a write UPDATE and DEL. No coalescing, no leases,
// no versions, no breaker; a Redis error fails the request.
type naive struct {
	rdb    *redis.Client
	db     *store
	prefix string
	hits   atomic.Uint64
}

func newNaive(rdb *redis.Client, db *store, prefix string) (users, error) {
	return &naive{rdb: rdb, db: db, prefix: prefix}, nil
}

func (n *naive) Get(ctx context.Context, id string) (User, error) {
	return n.get(ctx, n.prefix+"naive-user:"+id, id, longTTL)
}

func (n *naive) GetHot(ctx context.Context, id string) (User, error) {
	return n.get(ctx, n.prefix+"naive-hot:"+id, id, hotTTL)
}

func (n *naive) get(ctx context.Context, key, id string, ttl time.Duration) (User, error) {
	b, err := n.rdb.Get(ctx, key).Bytes()
	if err == nil {
		var u User
		if err := json.Unmarshal(b, &u); err == nil {
			n.hits.Add(1)
			return u, nil
		}
	} else if !errors.Is(err, redis.Nil) {
		return User{}, err
	}
	u, err := n.db.get(ctx, id)
	if err != nil {
		return User{}, err
	}
	b, _ = json.Marshal(u)
	return u, n.rdb.Set(ctx, key, b, ttl).Err()
}

func (n *naive) Rename(ctx context.Context, id, name string) (User, error) {
	u, err := n.db.rename(ctx, id, name)
	if err != nil {
		return User{}, err
	}
	return u, n.rdb.Del(ctx, n.prefix+"naive-user:"+id).Err()
}

func (n *naive) Evict(ctx context.Context, id string) error {
	return n.rdb.Del(ctx, n.prefix+"naive-user:"+id).Err()
}

func (n *naive) Hits() uint64      { return n.hits.Load() }
func (n *naive) Breaker() string   { return "-" }
func (n *naive) Counts() libCounts { return libCounts{} }
func (n *naive) Close()            {}
