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

// fakeElapsed replaces l's monotonic clock with one the test moves, so
// that rate limits are tested without waiting. Call it before l is used.
func fakeElapsed(l *Loader[row]) *atomic.Int64 {
	var now atomic.Int64
	l.elapsed = func() time.Duration { return time.Duration(now.Load()) }
	return &now
}

func TestFailoverClusterClientGetsReloadSeam(t *testing.T) {
	mr, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	require.Nil(t, l.reloadState, "a single-node client has no slot map")

	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cc.Close() })
	lc := newLoader(t, cc, newTable(), &Options{Prefix: "t:"})
	require.NotNil(t, lc.reloadState, "a cluster client's slot map is reloaded on failures")
}

func TestFailoverFailedCallReloadsClusterStateRateLimited(t *testing.T) {
	const (
		pass = iota
		failConn
		cancelCaller
	)
	mr, rdb := fakeRedis(t)
	var mode atomic.Int32
	var cancelCall context.CancelFunc
	rdb.AddHook(&resHook{before: func(string, string) error {
		switch mode.Load() {
		case failConn:
			return errResUnreachable
		case cancelCaller:
			cancelCall()
			return context.Canceled
		}
		return nil
	}})
	l := newLoader(t, rdb, newTable(), &Options{DisableBreaker: true, RedisTimeout: resRelaxed})
	now := fakeElapsed(l)
	var reloads atomic.Int64
	l.reloadState = func(context.Context) { reloads.Add(1) }
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

func TestFailoverOpenBreakerKeepsReloadingClusterState(t *testing.T) {
	_, rdb := fakeRedis(t)
	var calls atomic.Int64
	rdb.AddHook(&resHook{before: func(string, string) error {
		calls.Add(1)
		return errResUnreachable
	}})
	l := newLoader(t, rdb, newTable(), &Options{BreakerFailures: 1, BreakerCooldown: time.Hour})
	now := fakeElapsed(l)
	var reloads atomic.Int64
	l.reloadState = func(context.Context) { reloads.Add(1) }
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

// retrierFixture is a Loader whose retrier's backoff never runs out in a
// test (so every try it makes was woken by something), on a Redis whose
// failures the test switches, counting the invalidations sent.
type retrierFixture struct {
	l       *Loader[row]
	tb      *table
	rdb     *redis.Client
	now     *atomic.Int64
	mode    atomic.Int32
	invs    atomic.Int64 // invalidate scripts sent, or failed by the hook
	setsOfA atomic.Int64
}

const (
	rfPass           = iota
	rfFailAll        // Redis unreachable
	rfFailInvalidate // Redis answers, but invalidations cannot land (their master is down)
)

func newRetrierFixture(t *testing.T, opts *Options) *retrierFixture {
	t.Helper()
	_, rdb := fakeRedis(t)
	f := &retrierFixture{tb: newTable(), rdb: rdb}
	// Tries are counted once each: a script's first run on the server is
	// an EVALSHA answered NOSCRIPT, then an EVAL.
	rdb.AddHook(&resHook{
		before: func(name, key string) error {
			if name == "set" && key == "t:row#2:a" {
				f.setsOfA.Add(1)
			}
			fail := false
			switch f.mode.Load() {
			case rfFailAll:
				fail = true
			case rfFailInvalidate:
				fail = name == "invalidate"
			}
			if !fail {
				return nil
			}
			if name == "invalidate" {
				f.invs.Add(1)
			}
			return errResUnreachable
		},
		after: func(name, _ string, err error) {
			if name == "invalidate" && !redis.HasErrorPrefix(err, "NOSCRIPT") {
				f.invs.Add(1)
			}
		},
	})
	o := *opts
	o.Prefix = "t:"
	f.l = newLoader(t, rdb, f.tb, &o)
	f.l.retryWait.first, f.l.retryWait.max = time.Hour, time.Hour
	f.now = fakeElapsed(f.l)
	return f
}

// settled waits until the retrier has made n tries in all (counting the
// invalidations sent by the test's own calls in n) and is idle.
func (f *retrierFixture) settled(t *testing.T, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return f.invs.Load() == n && !f.l.retrying.Load() },
		10*time.Second, time.Millisecond, "invalidations sent: %d, want %d", f.invs.Load(), n)
}

// queueA commits a new value of a while Redis is unreachable, so that its
// invalidation is queued, and waits for the retrier's first (failed) try.
func (f *retrierFixture) queueA(t *testing.T, val string) {
	t.Helper()
	f.mode.Store(rfFailAll)
	last := f.l.lastRetry.Load()
	_, err := f.l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return f.tb.put("a", val), nil })
	require.NoError(t, err)
	require.EqualValues(t, 1, f.l.Stats().InvalidationsPending)
	// WriteThrough's own tries (within InvalidateTimeout), then the
	// retrier's on enqueue; its next waits out its backoff (an hour).
	require.Eventually(t, func() bool { return f.l.lastRetry.Load() != last && !f.l.retrying.Load() },
		10*time.Second, time.Millisecond, "the retrier's try on enqueue")
}

func TestFailoverRedisSuccessWakesRetrier(t *testing.T) {
	ev := &events{}
	retried := ev.on(EventInvalidationRetried)
	f := newRetrierFixture(t, &Options{DisableBreaker: true, RedisTimeout: resRelaxed, Recorder: ev})
	l, tb := f.l, f.tb
	tb.put("a", "a1")
	tb.put("b", "b1")
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	f.queueA(t, "a2")
	tries := f.invs.Load()

	// Redis answers again, but not yet for a (one master still down).
	// Successful calls within retryBackoff of the last try do not wake
	// the retrier.
	f.mode.Store(rfFailInvalidate)
	f.now.Store(int64(retryBackoff - time.Millisecond))
	for range 5 {
		require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	}
	require.Equal(t, tries, f.invs.Load(), "no try within retryBackoff of the last")
	require.False(t, l.retrying.Load())
	require.Empty(t, l.wake)

	// Past it, the next success wakes it: one try, which fails.
	f.now.Store(int64(retryBackoff))
	require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	f.settled(t, tries+1)
	require.EqualValues(t, 1, l.Stats().InvalidationsPending)

	// Redis is healthy: the next success past the interval wakes the
	// retrier and the queue lands, long before its backoff (an hour here).
	f.mode.Store(rfPass)
	f.now.Store(int64(2 * retryBackoff))
	require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	wait(t, retried, "the queued invalidation")
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 10*time.Second, time.Millisecond)
	require.Equal(t, "2", fields(t, f.rdb, "t:row#2:a")["f"], "a tombstone")
	require.Equal(t, "a2", resGetRow(t, l, "a").Val)
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsRetried)
}

func TestFailoverWriteOfQueuedKeyTriesRedis(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sent  int // invalidations
		write func(t *testing.T, f *retrierFixture)
	}{
		{"WriteThrough", 1, func(t *testing.T, f *retrierFixture) {
			v, err := f.l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return f.tb.put("a", "a3"), nil })
			require.NoError(t, err)
			require.Equal(t, "a3", v.Val)
		}},
		{"Invalidate", 2, func(t *testing.T, f *retrierFixture) {
			f.tb.put("a", "a3")
			require.NoError(t, f.l.Invalidate(context.Background(), "a", "b"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRetrierFixture(t, &Options{DisableBreaker: true, RedisTimeout: resRelaxed})
			l := f.l
			f.tb.put("a", "a1")
			require.Equal(t, "a1", resGetRow(t, l, "a").Val)
			f.queueA(t, "a2")
			tries := f.invs.Load()

			// Redis is back; the clock stands still, so nothing wakes the
			// retrier: the write itself applies the queued invalidation.
			f.mode.Store(rfPass)
			tc.write(t, f)
			require.Equal(t, tries+int64(tc.sent), f.invs.Load(), "sent by the write")
			s := l.Stats()
			require.Zero(t, s.InvalidationsPending)
			require.EqualValues(t, 1, s.InvalidationsQueued, "not queued again")
			require.EqualValues(t, 1, s.InvalidationsRetried)
			require.Zero(t, f.setsOfA.Load(), "no value stored while an older invalidation was queued")
			h := fields(t, f.rdb, "t:row#2:a")
			require.Equal(t, "2", h["f"], "a tombstone")
			require.NotContains(t, h, "p")

			bypassed := s.Bypassed
			require.Equal(t, "a3", resGetRow(t, l, "a").Val)
			require.Equal(t, bypassed, l.Stats().Bypassed, "a reads Redis again")
		})
	}
}

func TestFailoverCloseAppliesQueuePastOpenBreaker(t *testing.T) {
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	f := newRetrierFixture(t, &Options{BreakerFailures: 1, BreakerCooldown: time.Hour, Recorder: ev})
	l := f.l
	f.tb.put("a", "a1")
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)

	f.mode.Store(rfFailAll)
	_, err := l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return f.tb.put("a", "a2"), nil })
	require.NoError(t, err)
	wait(t, opened, "the breaker to open")
	require.Equal(t, BreakerOpen, l.BreakerState())
	require.EqualValues(t, 1, l.Stats().InvalidationsPending)

	// Redis is back, but the breaker will not let a call through for an
	// hour: Close's last try goes past it.
	f.mode.Store(rfPass)
	require.Equal(t, BreakerOpen, l.BreakerState())
	require.NoError(t, l.Close())
	s := l.Stats()
	require.Zero(t, s.InvalidationsPending)
	require.Zero(t, s.InvalidationsDropped)
	require.EqualValues(t, 1, s.InvalidationsRetried)
	h := fields(t, f.rdb, "t:row#2:a")
	require.Equal(t, "2", h["f"], "a tombstone")
	require.NotContains(t, h, "p")
}
