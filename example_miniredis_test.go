package cache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// Unit-testing code that uses a Loader: an in-process miniredis, its clock
// moved with FastForward, its failures injected with SetError and Close.
// (In a test: miniredis.RunT(t), which closes it when the test ends.)
func Example_unitTestWithMiniredis() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()

	loads := 0
	names := cache.Must(cache.New(rdb, "name", func(ctx context.Context, id string) (string, error) {
		loads++ // a fake of the database, counting its reads
		return "Ada", nil
	}, &cache.Options{TTL: time.Minute, DisableJitter: true}))
	defer names.Close()
	ctx := context.Background()

	_, _ = names.Get(ctx, "42") // miss
	_, _ = names.Get(ctx, "42") // hit
	fmt.Println("loads:", loads)

	mr.FastForward(time.Minute) // the entry's TTL runs out
	_, _ = names.Get(ctx, "42")
	fmt.Println("loads after the TTL:", loads)

	mr.SetError("ERR injected") // every command fails with this reply
	v, err := names.Get(ctx, "42")
	fmt.Println("with Redis failing:", v, err, "loads:", loads)
	mr.SetError("")

	mr.Close() // Redis gone: connections refused at once
	v, err = names.Get(ctx, "42")
	fmt.Println("with Redis gone:", v, err, "loads:", loads)
	// Output:
	// loads: 1
	// loads after the TTL: 2
	// with Redis failing: Ada <nil> loads: 3
	// with Redis gone: Ada <nil> loads: 4
}
