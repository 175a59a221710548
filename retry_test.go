package cache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestQueuedInvalidationLandsWhenBreakerCloses(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := resWatch(rdb, "fill")
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
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	resWaitKey(t, fills, "the fill of a")

	mr.Close()
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "a2"), nil })
	require.NoError(t, err, "the commit happened")
	require.Equal(t, "a2", v.Val)
	wait(t, opened, "the breaker to open")
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsPending)

	// a bypasses Redis; b skips it through the breaker.
	require.Equal(t, "a2", resGetRow(t, l, "a").Val)
	require.EqualValues(t, 1, l.Stats().Bypassed)
	skipped := l.Stats().RedisSkipped
	require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	require.EqualValues(t, 1, l.Stats().Bypassed, "b is not pending")
	require.Greater(t, l.Stats().RedisSkipped, skipped)

	require.Contains(t, fieldsOf(t, resMustGet(t, mr, l.Key("a")))["p"], `"a1"`, "Redis will come back with the old entry")
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
			require.Equal(t, "b1", resGetRow(t, l, "b").Val)
		case <-timeout:
			t.Fatal("the queued invalidation did not land")
		}
	}
	wait(t, closed, "the breaker to close")
	// EventInvalidationRetried is counted just before the key leaves the
	// queue (see TestInvalidationRetriedCountedAfterLeavingQueue).
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "2", fieldsOf(t, resMustGet(t, mr, l.Key("a")))["f"], "a tombstone")
	require.Empty(t, fieldsOf(t, resMustGet(t, mr, l.Key("a")))["p"])
	s = l.Stats()
	require.EqualValues(t, 1, s.InvalidationsRetried)
	require.Zero(t, s.InvalidationsDropped)

	bypassed := s.Bypassed
	require.Equal(t, "a2", resGetRow(t, l, "a").Val)
	require.Equal(t, "a2", resGetRow(t, l, "a").Val)
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
	rdb.AddHook(&resHook{before: func(name, key string) error {
		switch mode.Load() {
		case failAll:
			return errResUnreachable
		case failInvalidate:
			if name == "invalidate" {
				return errResUnreachable
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
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", DisableBreaker: true, RedisTimeout: resRelaxed, Recorder: ev})
	require.Equal(t, aKey, l.Key("a"))
	ctx := context.Background()
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)

	mode.Store(failAll)
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "a2"), nil })
	require.NoError(t, err)
	require.Equal(t, "a2", v.Val)
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsPending)

	mode.Store(failInvalidate)
	misses := l.Stats().Misses
	require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	require.Equal(t, misses+1, l.Stats().Misses, "Redis is back: b is read and filled")
	require.Equal(t, 1, int(rdb.Exists(ctx, l.Key("b")).Val()))

	reads := hmgetA.Load()
	require.Equal(t, "a2", resGetRow(t, l, "a").Val, "never the old a1 that Redis still holds")
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
	require.Equal(t, "a3", resGetRow(t, l, "a").Val)
	require.EqualValues(t, 2, l.Stats().Bypassed)
	require.Equal(t, reads, hmgetA.Load())

	mode.Store(pass)
	wait(t, retried, "the queued invalidation")
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 5*time.Second, time.Millisecond)
	h := fields(t, rdb, aKey)
	require.Equal(t, "2", h["f"], "a tombstone")
	require.NotContains(t, h, "p")
	require.EqualValues(t, 1, l.Stats().InvalidationsRetried, "one invalidation for both writes")

	require.Equal(t, "a3", resGetRow(t, l, "a").Val)
	require.Equal(t, "a3", resGetRow(t, l, "a").Val)
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
	rec := resRecorderFunc(func(e Event) {
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
