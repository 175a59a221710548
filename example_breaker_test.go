package cache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// The Loaders of one Redis share a circuit breaker: the failed calls of
// all of them count towards opening it, and it opens, and closes, for all
// of them at once; each Loader still reports the change in its Stats and
// metrics.
func ExampleNewBreaker() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()

	breaker, err := cache.NewBreaker(rdb, &cache.BreakerOptions{Failures: 2, Cooldown: time.Minute})
	if err != nil {
		panic(err)
	}
	load := func(ctx context.Context, id string) (string, error) { return "row " + id, nil }
	users := cache.Must(cache.New(rdb, "user", load, &cache.Options{Breaker: breaker}))
	defer users.Close()
	orders := cache.Must(cache.New(rdb, "order", load, &cache.Options{Breaker: breaker}))
	defer orders.Close()
	ctx := context.Background()

	mr.Close()                     // Redis gone
	_ = users.Set(ctx, "1", "Ada") // a failed call
	fmt.Println("after one failure:", breaker.State())
	_ = orders.Set(ctx, "7", "book") // another Loader's: the second in a row
	fmt.Println("users:", users.BreakerState(), "orders:", orders.BreakerState())
	fmt.Println("opened, as users and orders count it:", users.Stats().BreakerOpened, orders.Stats().BreakerOpened)
	v, err := users.Get(ctx, "1") // from the database, Redis not called
	fmt.Println(v, err)
	// Output:
	// after one failure: closed
	// users: open orders: open
	// opened, as users and orders count it: 1 1
	// row 1 <nil>
}
