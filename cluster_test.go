package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// The Cluster's topology reloads: a failed call asks go-redis to reload its
// slot map, rate-limited, and an open breaker keeps asking.

// fakeElapsed replaces l's monotonic clock with one the test moves, so
// that rate limits are tested without waiting. Call it before l is used.
func fakeElapsed(l *Loader[row]) *atomic.Int64 {
	var now atomic.Int64
	l.elapsed = func() time.Duration { return time.Duration(now.Load()) }
	return &now
}

func TestClusterClientGetsTopologyReload(t *testing.T) {
	mr, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	require.Nil(t, l.cluster.reloadState, "a single-node client has no slot map")

	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cc.Close() })
	lc := newLoader(t, cc, newTable(), &Options{Prefix: "t:"})
	require.NotNil(t, lc.cluster.reloadState, "a cluster client's slot map is reloaded on failures")
}

func TestFailedCallReloadsTopologyRateLimited(t *testing.T) {
	const (
		pass = iota
		failConn
		cancelCaller
	)
	mr, rdb := fakeRedis(t)
	var mode atomic.Int32
	var cancelCall context.CancelFunc
	rdb.AddHook(&cmdHook{before: func(hookCmd) error {
		switch mode.Load() {
		case failConn:
			return errUnreachable
		case cancelCaller:
			cancelCall()
			return context.Canceled
		}
		return nil
	}})
	l := newLoader(t, rdb, newTable(), &Options{DisableBreaker: true, RedisTimeout: relaxedTimeout})
	now := fakeElapsed(l)
	var reloads atomic.Int64
	l.cluster.reloadState = func(context.Context) { reloads.Add(1) }
	ctx := context.Background()
	invalidate := func() error { return l.Set(ctx, "a", row{"a", 1}) } // one Redis call (Invalidate retries and queues)
	at := func(d time.Duration) { now.Store(int64(d)) }

	mode.Store(failConn)
	for range 3 {
		require.Error(t, invalidate())
	}
	require.EqualValues(t, 1, reloads.Load(), "one reload for a burst of failures")
	at(topologyReloadEvery - time.Millisecond)
	require.Error(t, invalidate())
	require.EqualValues(t, 1, reloads.Load(), "not again within the interval")
	at(topologyReloadEvery)
	require.Error(t, invalidate())
	require.EqualValues(t, 2, reloads.Load(), "again once the interval is over")

	// A burst of concurrent failures: one reload.
	at(10 * topologyReloadEvery)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() { _ = invalidate() })
	}
	wg.Wait()
	require.EqualValues(t, 3, reloads.Load())

	// Neither an error reply (Redis answered), nor the caller leaving, nor a
	// success asks for a reload.
	at(20 * topologyReloadEvery)
	mode.Store(pass)
	mr.SetError("ERR injected")
	require.Error(t, invalidate())
	mr.SetError("")
	mode.Store(cancelCaller)
	cctx, cancel := context.WithCancel(ctx)
	cancelCall = cancel
	require.Error(t, l.Set(cctx, "a", row{"a", 1}))
	mode.Store(pass)
	require.NoError(t, invalidate())
	require.EqualValues(t, 3, reloads.Load())

	// A Get's failures count too.
	mode.Store(failConn)
	_, err := l.Get(ctx, "a")
	require.ErrorIs(t, err, ErrNotFound, "fail-open: the load answers")
	require.EqualValues(t, 4, reloads.Load())
}

func TestOpenBreakerKeepsReloadingTopology(t *testing.T) {
	_, rdb := fakeRedis(t)
	var calls atomic.Int64
	rdb.AddHook(&cmdHook{before: func(hookCmd) error {
		calls.Add(1)
		return errUnreachable
	}})
	l := newLoader(t, rdb, newTable(), &Options{BreakerFailures: 1, BreakerCooldown: time.Hour})
	now := fakeElapsed(l)
	var reloads atomic.Int64
	l.cluster.reloadState = func(context.Context) { reloads.Add(1) }
	ctx := context.Background()
	require.Error(t, l.Invalidate(ctx, "a"))
	require.Equal(t, BreakerOpen, l.BreakerState())
	require.EqualValues(t, 1, reloads.Load())
	sent := calls.Load()

	// Skipped calls keep the slot map current, rate-limited as failures.
	require.ErrorIs(t, l.Invalidate(ctx, "a"), ErrRedisUnavailable)
	require.EqualValues(t, 1, reloads.Load(), "not again within the interval")
	now.Store(int64(topologyReloadEvery))
	for range 3 {
		require.ErrorIs(t, l.Invalidate(ctx, "a"), ErrRedisUnavailable)
	}
	require.EqualValues(t, 2, reloads.Load())
	require.Equal(t, sent, calls.Load(), "Redis was not called")
}
