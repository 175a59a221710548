package cache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestQueuedInvalidationLandsWhenBreakerCloses(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := watchCmd(rdb, "fill")
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	closed := ev.on(EventBreakerClosed)
	retried := ev.on(EventInvalidationRetried)
	tb := newTable()
	tb.put("a", "a1")
	tb.put("b", "b1")
	l := newLoader(t, rdb, tb, &Options{BreakerFailures: 1, BreakerCooldown: 50 * time.Millisecond,
		RedisTimeout: 250 * time.Millisecond, Recorder: ev})
	ctx := context.Background()
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	waitKey(t, fills, "the fill of a")

	mr.Close()
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "a2"), nil })
	require.NoError(t, err, "the commit happened")
	require.Equal(t, "a2", v.Val)
	wait(t, opened, "the breaker to open")
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsPending)

	// a bypasses Redis; b skips it through the breaker.
	require.Equal(t, "a2", getRow(t, l, "a").Val)
	require.EqualValues(t, 1, l.Stats().Bypassed)
	skipped := l.Stats().RedisSkipped
	require.Equal(t, "b1", getRow(t, l, "b").Val)
	require.EqualValues(t, 1, l.Stats().Bypassed, "b is not pending")
	require.Greater(t, l.Stats().RedisSkipped, skipped)

	require.Contains(t, fieldsOf(t, rawEntry(t, mr, l.Key("a")))["p"], `"a1"`, "Redis will come back with the old entry")
	require.NoError(t, mr.Restart())
	// Traffic for the probe; the queued invalidation lands once the
	// breaker closes.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case <-retried:
			done = true
		case <-tick.C:
			require.Equal(t, "b1", getRow(t, l, "b").Val)
		case <-timeout:
			t.Fatal("the queued invalidation did not land")
		}
	}
	wait(t, closed, "the breaker to close")
	// The retrier applies the queue in the background: the count of
	// pending invalidations drops once it has (see
	// TestInvalidationRetriedCountedAfterLeavingQueue).
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "2", fieldsOf(t, rawEntry(t, mr, l.Key("a")))["f"], "a tombstone")
	require.Empty(t, fieldsOf(t, rawEntry(t, mr, l.Key("a")))["p"])
	s = l.Stats()
	require.EqualValues(t, 1, s.InvalidationsRetried)
	require.Zero(t, s.InvalidationsDropped)

	bypassed := s.Bypassed
	require.Equal(t, "a2", getRow(t, l, "a").Val)
	require.Equal(t, "a2", getRow(t, l, "a").Val)
	s = l.Stats()
	require.Equal(t, bypassed, s.Bypassed, "a reads Redis again")
	require.NotZero(t, s.Hits)
}

func TestQueuedInvalidationKeepsOrder(t *testing.T) {
	const (
		pass           = iota
		failAll        // Redis unreachable
		failInvalidate // Redis is back, but the queued invalidation cannot land yet
	)
	_, rdb := fakeRedis(t)
	var mode atomic.Int32
	var hmgetA, setA atomic.Int64
	aKey := "t:row#2:a"
	rdb.AddHook(&cmdHook{before: func(c hookCmd) error {
		name, key := c.name, c.key
		switch mode.Load() {
		case failAll:
			return errUnreachable
		case failInvalidate:
			if name == "invalidate" {
				return errUnreachable
			}
		}
		if key == aKey {
			switch name {
			case "getrange":
				hmgetA.Add(1)
			case "set":
				setA.Add(1)
			}
		}
		return nil
	}})
	ev := &events{}
	retried := ev.on(EventInvalidationRetried)
	tb := newTable()
	tb.put("a", "a1")
	tb.put("b", "b1")
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", DisableBreaker: true, RedisTimeout: relaxedTimeout, Recorder: ev})
	require.Equal(t, aKey, l.Key("a"))
	ctx := context.Background()
	require.Equal(t, "a1", getRow(t, l, "a").Val)

	mode.Store(failAll)
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "a2"), nil })
	require.NoError(t, err)
	require.Equal(t, "a2", v.Val)
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsPending)

	mode.Store(failInvalidate)
	misses := l.Stats().Misses
	require.Equal(t, "b1", getRow(t, l, "b").Val)
	require.Equal(t, misses+1, l.Stats().Misses, "Redis is back: b is read and filled")
	require.Equal(t, 1, int(rdb.Exists(ctx, l.Key("b")).Val()))

	reads := hmgetA.Load()
	require.Equal(t, "a2", getRow(t, l, "a").Val, "never the old a1 that Redis still holds")
	require.EqualValues(t, 1, l.Stats().Bypassed)
	require.Equal(t, reads, hmgetA.Load(), "a is not read from Redis while its invalidation is queued")

	// A second write of a: its value must not land before the older
	// invalidation that is still queued.
	v, err = l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "a3"), nil })
	require.NoError(t, err)
	require.Equal(t, "a3", v.Val)
	s = l.Stats()
	require.EqualValues(t, 2, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsPending, "one key")
	require.Zero(t, setA.Load(), "no Set of a was sent")
	require.Contains(t, fields(t, rdb, aKey)["p"], `"a1"`)
	require.Equal(t, "a3", getRow(t, l, "a").Val)
	require.EqualValues(t, 2, l.Stats().Bypassed)
	require.Equal(t, reads, hmgetA.Load())

	mode.Store(pass)
	wait(t, retried, "the queued invalidation")
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 5*time.Second, time.Millisecond)
	h := fields(t, rdb, aKey)
	require.Equal(t, "2", h["f"], "a tombstone")
	require.NotContains(t, h, "p")
	require.EqualValues(t, 1, l.Stats().InvalidationsRetried, "one invalidation for both writes")

	require.Equal(t, "a3", getRow(t, l, "a").Val)
	require.Equal(t, "a3", getRow(t, l, "a").Val)
	require.Greater(t, hmgetA.Load(), reads, "a is read from Redis again")
	require.EqualValues(t, 2, l.Stats().Bypassed)
	require.Zero(t, setA.Load())
}

// EventInvalidationRetried is counted once the key has left the queue, so a
// Recorder (or a test) woken by it no longer sees the invalidation pending
// nor Gets of the key bypassing Redis.
func TestInvalidationRetriedCountedAfterLeavingQueue(t *testing.T) {
	mr, rdb := fakeRedis(t)
	var l atomic.Pointer[Loader[row]]
	pendingAtEvent := make(chan uint64, 1)
	rec := recorderFunc(func(e Event) {
		if e == EventInvalidationRetried {
			pendingAtEvent <- l.Load().Stats().InvalidationsPending
		}
	})
	tb := newTable()
	l.Store(newLoader(t, rdb, tb, &Options{DisableBreaker: true, Recorder: rec}))
	mr.Close()
	write := func(context.Context) (row, error) { return tb.put("a", "a1"), nil }
	_, err := l.Load().WriteThrough(context.Background(), "a", write)
	require.NoError(t, err)
	require.NoError(t, mr.Restart())
	select {
	case n := <-pendingAtEvent:
		require.Zero(t, n, "the invalidation was applied but is still pending")
	case <-time.After(10 * time.Second):
		t.Fatal("no retry")
	}
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
	rdb.AddHook(&cmdHook{
		before: func(c hookCmd) error {
			name, key := c.name, c.key
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
			return errUnreachable
		},
		after: func(c hookCmd, err error) error {
			if c.name == "invalidate" && !redis.HasErrorPrefix(err, "NOSCRIPT") {
				f.invs.Add(1)
			}
			return nil
		},
	})
	o := *opts
	o.Prefix = "t:"
	f.l = newLoader(t, rdb, f.tb, &o)
	f.l.retry.wait.first, f.l.retry.wait.max = time.Hour, time.Hour
	f.now = fakeElapsed(f.l)
	return f
}

// settled waits until the retrier has made n tries in all (counting the
// invalidations sent by the test's own calls in n) and is idle.
func (f *retrierFixture) settled(t *testing.T, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return f.invs.Load() == n && !f.l.retry.retrying.Load() },
		10*time.Second, time.Millisecond, "invalidations sent: %d, want %d", f.invs.Load(), n)
}

// queueA commits a new value of a while Redis is unreachable, so that its
// invalidation is queued, and waits for the retrier's first (failed) try.
func (f *retrierFixture) queueA(t *testing.T, val string) {
	t.Helper()
	f.mode.Store(rfFailAll)
	last := f.l.retry.lastRetry.Load()
	_, err := f.l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return f.tb.put("a", val), nil })
	require.NoError(t, err)
	require.EqualValues(t, 1, f.l.Stats().InvalidationsPending)
	// WriteThrough's own tries (within InvalidateTimeout), then the
	// retrier's on enqueue; its next waits out its backoff (an hour).
	require.Eventually(t, func() bool { return f.l.retry.lastRetry.Load() != last && !f.l.retry.retrying.Load() },
		10*time.Second, time.Millisecond, "the retrier's try on enqueue")
}

func TestRedisSuccessWakesRetrier(t *testing.T) {
	ev := &events{}
	retried := ev.on(EventInvalidationRetried)
	f := newRetrierFixture(t, &Options{DisableBreaker: true, RedisTimeout: relaxedTimeout, Recorder: ev})
	l, tb := f.l, f.tb
	tb.put("a", "a1")
	tb.put("b", "b1")
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	f.queueA(t, "a2")
	tries := f.invs.Load()

	// Redis answers again, but not yet for a (one master still down).
	// Successful calls within retryBackoff of the last try do not wake
	// the retrier.
	f.mode.Store(rfFailInvalidate)
	f.now.Store(int64(retryBackoff - time.Millisecond))
	for range 5 {
		require.Equal(t, "b1", getRow(t, l, "b").Val)
	}
	require.Equal(t, tries, f.invs.Load(), "no try within retryBackoff of the last")
	require.False(t, l.retry.retrying.Load())
	require.Empty(t, l.retry.wake)

	// Past it, the next success wakes it: one try, which fails.
	f.now.Store(int64(retryBackoff))
	require.Equal(t, "b1", getRow(t, l, "b").Val)
	f.settled(t, tries+1)
	require.EqualValues(t, 1, l.Stats().InvalidationsPending)

	// Redis is healthy: the next success past the interval wakes the
	// retrier and the queue lands, long before its backoff (an hour here).
	f.mode.Store(rfPass)
	f.now.Store(int64(2 * retryBackoff))
	require.Equal(t, "b1", getRow(t, l, "b").Val)
	wait(t, retried, "the queued invalidation")
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 10*time.Second, time.Millisecond)
	require.Equal(t, "2", fields(t, f.rdb, "t:row#2:a")["f"], "a tombstone")
	require.Equal(t, "a2", getRow(t, l, "a").Val)
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsRetried)
}

func TestWriteOfQueuedKeyTriesRedis(t *testing.T) {
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
			f := newRetrierFixture(t, &Options{DisableBreaker: true, RedisTimeout: relaxedTimeout})
			l := f.l
			f.tb.put("a", "a1")
			require.Equal(t, "a1", getRow(t, l, "a").Val)
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
			require.Equal(t, "a3", getRow(t, l, "a").Val)
			require.Equal(t, bypassed, l.Stats().Bypassed, "a reads Redis again")
		})
	}
}

func TestCloseAppliesQueuePastOpenBreaker(t *testing.T) {
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	f := newRetrierFixture(t, &Options{BreakerFailures: 1, BreakerCooldown: time.Hour, Recorder: ev})
	l := f.l
	f.tb.put("a", "a1")
	require.Equal(t, "a1", getRow(t, l, "a").Val)

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
