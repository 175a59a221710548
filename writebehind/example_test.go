package writebehind_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/writebehind"
)

// Counting likes: Add counts in Redis, Get adds what is not flushed yet to
// the database value (here a constant; in production a cache.Loader's Get).
// A Flusher (see NewFlusher) would move the pending deltas to MySQL.
func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	likes, err := writebehind.New(rdb, "post-likes", &writebehind.Options{
		SkipPolicyCheck: true, // miniredis has no CONFIG; a real Redis is checked
		Read:            func(ctx context.Context, post string) (int64, error) { return 40, nil },
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	likes.Add(ctx, "post:7", 1)
	likes.Add(ctx, "post:7", 1)
	likes.AddOnce(ctx, "post:7", 1, "request-123")
	likes.AddOnce(ctx, "post:7", 1, "request-123") // a retry of the same request
	pending, _ := likes.Pending(ctx, "post:7")
	total, _ := likes.Get(ctx, "post:7")
	fmt.Println("pending:", pending, "total:", total)
	// Output: pending: 3 total: 43
}
