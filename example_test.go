package cache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// User is a row: its version column makes it Versioned, so the cache never
// replaces a newer user with an older one.
type User struct {
	ID      string
	Name    string
	Version int64
}

func (u User) CacheVersion() int64 { return u.Version }

// users stands in for a MySQL table; each example starts from seed.
var users map[string]User

func seed() { users = map[string]User{"42": {ID: "42", Name: "Ada", Version: 1}} }

func userByID(ctx context.Context, id string) (User, error) {
	u, ok := users[id]
	if !ok {
		return User{}, cache.ErrNotFound // or return sql.ErrNoRows as is
	}
	return u, nil
}

func newRedis() (*redis.Client, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	return rdb, func() { rdb.Close(); mr.Close() }
}

func ExampleLoader_Get() {
	seed()
	rdb, done := newRedis()
	defer done()
	loader := cache.Must(cache.New(rdb, "user", userByID, &cache.Options{TTL: time.Minute}))
	defer loader.Close()
	ctx := context.Background()

	u, _ := loader.Get(ctx, "42") // miss: loads and fills
	fmt.Println(u.Name)
	u, _ = loader.Get(ctx, "42") // hit: one HMGET
	fmt.Println(u.Name)
	_, err := loader.Get(ctx, "7") // no such row: cached as a negative entry
	fmt.Println(errors.Is(err, cache.ErrNotFound))

	s := loader.Stats()
	fmt.Printf("hits=%d misses=%d loads=%d\n", s.Hits, s.Misses, s.Loads)
	// Output:
	// Ada
	// Ada
	// true
	// hits=1 misses=2 loads=2
}

func ExampleLoader_WriteThrough() {
	seed()
	rdb, done := newRedis()
	defer done()
	loader := cache.Must(cache.New(rdb, "user", userByID, nil))
	defer loader.Close()
	ctx := context.Background()

	// write commits to the database and returns the row as committed.
	rename := func(ctx context.Context) (User, error) {
		u := users["42"]
		u.Name, u.Version = "Ada Lovelace", u.Version+1
		users["42"] = u
		return u, nil
	}
	u, err := loader.WriteThrough(ctx, "42", rename)
	fmt.Println(u.Name, u.Version, err)
	u, _ = loader.Get(ctx, "42") // served from Redis: no load
	fmt.Println(u.Name, loader.Stats().Loads)
	// Output:
	// Ada Lovelace 2 <nil>
	// Ada Lovelace 0
}

func ExampleLoader_Invalidate() {
	seed()
	rdb, done := newRedis()
	defer done()
	loader := cache.Must(cache.New(rdb, "user", userByID, nil))
	defer loader.Close()
	ctx := context.Background()

	u, _ := loader.Get(ctx, "42")
	fmt.Println(u.Name)

	// Someone updates the row with plain SQL, then invalidates the key.
	users["42"] = User{ID: "42", Name: "Grace", Version: u.Version + 1}
	if err := loader.Invalidate(ctx, "42"); err != nil {
		log.Fatal(err)
	}
	u, _ = loader.Get(ctx, "42")
	fmt.Println(u.Name)
	// Output:
	// Ada
	// Grace
}

func ExampleNewPrometheus() {
	seed()
	rdb, done := newRedis()
	defer done()
	reg := prometheus.NewRegistry() // your registry; never the global one
	rec, err := cache.NewPrometheus(reg)
	if err != nil {
		log.Fatal(err)
	}
	loader := cache.Must(cache.New(rdb, "user", userByID, &cache.Options{Recorder: rec}))
	defer loader.Close()
	_, _ = loader.Get(context.Background(), "42")

	families, _ := reg.Gather()
	for _, f := range families {
		fmt.Println(f.GetName())
	}
	// Output:
	// cache_breaker_state
	// cache_events_total
	// cache_invalidations_pending
	// cache_load_duration_seconds
	// cache_loads_total
	// cache_read_bypass
	// cache_redis_duration_seconds
	// cache_requests_total
	// cache_writes_total
}
