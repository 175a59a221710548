package cache

// Regression tests: a flight that finished with an error (or "not found")
// must not answer Gets that arrive after its result was published, even
// while it is still releasing its lease.

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/script"
)

// slowRelease makes every lease release slow and fail on the client, as on
// a loaded machine: the release then runs after the flight's result is
// published, and the flight stays joinable meanwhile.
type slowRelease struct{}

func (slowRelease) DialHook(next redis.DialHook) redis.DialHook { return next }
func (slowRelease) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (slowRelease) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "evalsha" && len(a) > 1 && a[1] == script.SHA.Release {
			time.Sleep(200 * time.Millisecond)
			cmd.SetErr(context.DeadlineExceeded)
			return context.DeadlineExceeded
		}
		return next(ctx, cmd)
	}
}

// A Get that starts after the database came back is answered with the error
// of a load that failed before it started, without loading.
func TestFinishedFlightErrorNotShared(t *testing.T) {
	_, rdb := fakeRedis(t)
	rdb.AddHook(slowRelease{})
	tb := newTable()
	tb.put("k", "v1")
	var down atomic.Bool
	down.Store(true)
	tb.hook = func(context.Context, string, int64) error {
		if down.Load() {
			return errors.New("db down")
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{DisableBreaker: true, LeaseTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	_, err := l.Get(ctx, "k")
	require.ErrorContains(t, err, "db down")

	down.Store(false) // the database is back
	v, err := l.Get(ctx, "k")
	t.Logf("Get after recovery: %+v, %v; loads %d", v, err, tb.loads.Load())
	require.NoError(t, err, "a Get that began after the failure got the failed load's error")
}

// Without any slowness: a Get issued right after the previous one returned
// can find the finished flight still registered (between close(f.done) and
// run's deferred delete) and take its result. DisableNegativeCache promises
// a load per Get. Fails most runs under -race.
func TestFinishedFlightNotJoinedWithoutNegativeCache(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{DisableNegativeCache: true})
	for i := range 500 {
		_, err := l.Get(context.Background(), "nope")
		require.ErrorIs(t, err, ErrNotFound)
		if got := tb.loads.Load(); got != int64(i+1) {
			t.Fatalf("Get %d: %d loads, want one per Get", i+1, got)
		}
	}
}
