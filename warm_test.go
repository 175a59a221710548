package cache

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWarm(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	var keys []string
	for i := range 20 {
		k := strconv.Itoa(i)
		keys = append(keys, k)
		if i < 17 {
			tb.put(k, "v"+k) // 17, 18 have no row
		}
	}
	keys = append(keys, "boom")
	tb.hook = func(_ context.Context, k string, _ int64) error {
		if k == "boom" {
			return errors.New("db error")
		}
		return nil
	}
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	for _, k := range keys[:5] {
		_, err := l.Get(ctx, k)
		require.NoError(t, err)
	}
	loadsBefore := tb.loads.Load()
	var calls int
	res, err := l.Warm(ctx, keys, &WarmOptions{Concurrency: 4, Progress: func(WarmResult) { calls++ }})
	require.NoError(t, err)
	require.Equal(t, WarmResult{Done: 21, Hits: 5, Loaded: 12, NotFound: 3, Errors: 1}, res)
	require.Equal(t, 21, calls)
	require.EqualValues(t, 16, tb.loads.Load()-loadsBefore, "cached keys are not loaded again")

	res, err = l.Warm(ctx, keys, nil)
	require.NoError(t, err)
	require.Equal(t, WarmResult{Done: 21, Hits: 17, NotFound: 3, Errors: 1}, res, "everything but the failing key is cached now")
}

func TestWarmRespectsLeases(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	tbA, started, release := blockingTable()
	tbA.put("a", "one")
	a := newLoader(t, rdbA, tbA, &Options{RedisTimeout: 5 * time.Second})
	tbB := newTable()
	tbB.put("a", "one")
	ev := &events{}
	waiting := ev.on(EventLeaseWait)
	b := newLoader(t, newClient(t, mr.Addr()), tbB, &Options{Prefix: a.s.prefix, RedisTimeout: 5 * time.Second, Recorder: ev})

	go a.Get(context.Background(), "a")
	<-started // A holds the lease
	done := make(chan WarmResult)
	go func() {
		res, _ := b.Warm(context.Background(), []string{"a"}, nil)
		done <- res
	}()
	wait(t, waiting, "B's Warm to wait on A's lease")
	close(release)
	require.Equal(t, WarmResult{Done: 1, Loaded: 1}, <-done)
	require.Zero(t, tbB.loads.Load(), "B waited for A's fill instead of loading")
}

func TestWarmStopsWithContext(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	ctx, cancel := context.WithCancel(context.Background())
	tb.hook = func(context.Context, string, int64) error { cancel(); return nil }
	l := newLoader(t, rdb, tb, nil)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
		tb.put(keys[i], "x")
	}
	res, err := l.Warm(ctx, keys, &WarmOptions{Concurrency: 1})
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, res.Done, 100)
	_, err = l.Warm(context.Background(), keys, &WarmOptions{Concurrency: -1})
	require.ErrorContains(t, err, "cache: WarmOptions")
}
