package main

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// users is one process's cache of the users table, as the workload sees
// it. Both implementations share the store, Redis and the key layout.
type users interface {
	// Get reads a user through the long-TTL cache.
	Get(ctx context.Context, id string) (User, error)
	// GetHot reads a user through a cache with a short TTL (the hot key
	// phase), so that it expires several times during the phase.
	GetHot(ctx context.Context, id string) (User, error)
	// Rename updates the row and keeps the cache in step.
	Rename(ctx context.Context, id, name string) (User, error)
	// Hits is how many Gets were answered by Redis so far.
	Hits() uint64
	// Breaker is the state of the Redis circuit breaker ("-" if none).
	Breaker() string
	Close()
}

// Implementations selectable with -impl.
const (
	implLibrary = "cache"
	implNaive   = "naive"
)

const (
	longTTL = time.Minute
	hotTTL  = 300 * time.Millisecond
)

// library is this library: one Loader per cache, with default options
// apart from the TTLs.
type library struct {
	db        *store
	user, hot *cache.Loader[User]
}

func newLibrary(rdb *redis.Client, db *store, prefix string) (users, error) {
	user, err := cache.New(rdb, "user", db.get, &cache.Options{Prefix: prefix, TTL: longTTL})
	if err != nil {
		return nil, err
	}
	hot, err := cache.New(rdb, "hot", db.get, &cache.Options{Prefix: prefix, TTL: hotTTL})
	if err != nil {
		user.Close()
		return nil, err
	}
	return &library{db: db, user: user, hot: hot}, nil
}

func (l *library) Get(ctx context.Context, id string) (User, error)    { return l.user.Get(ctx, id) }
func (l *library) GetHot(ctx context.Context, id string) (User, error) { return l.hot.Get(ctx, id) }

// Rename commits the update and invalidates the key (queued and retried
// if Redis is unreachable).
func (l *library) Rename(ctx context.Context, id, name string) (User, error) {
	return l.user.WriteThrough(ctx, id, func(ctx context.Context) (User, error) {
		return l.db.rename(ctx, id, name)
	})
}

func (l *library) Hits() uint64    { return l.user.Stats().Hits + l.hot.Stats().Hits }
func (l *library) Breaker() string { return l.user.BreakerState().String() }
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

func (n *naive) Hits() uint64    { return n.hits.Load() }
func (n *naive) Breaker() string { return "-" }
func (n *naive) Close()          {}
