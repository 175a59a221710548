package cache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestPrometheusTwoLoadersOneRegistry(t *testing.T) {
	_, rdb := fakeRedis(t)
	reg := prometheus.NewPedanticRegistry()
	p1, err := NewPrometheus(reg)
	require.NoError(t, err)
	p2, err := NewPrometheus(reg)
	require.NoError(t, err, "a second adapter on the same registry shares the metrics")

	tb := newTable()
	tb.put("a", "x")
	users := newLoader(t, rdb, tb, &Options{Recorder: p1})
	users.name = "users"
	orders := newLoader(t, rdb, tb, &Options{Recorder: p2})
	orders.name = "orders"
	ctx := context.Background()
	for range 3 {
		_, err := users.Get(ctx, "a")
		require.NoError(t, err)
	}
	_, err = orders.Get(ctx, "missing")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = orders.Get(ctx, "missing")
	require.ErrorIs(t, err, ErrNotFound)

	require.Equal(t, 2.0, testutil.ToFloat64(p1.requests.WithLabelValues("users", "hit")))
	require.Equal(t, 1.0, testutil.ToFloat64(p1.requests.WithLabelValues("users", "miss")))
	require.Equal(t, 1.0, testutil.ToFloat64(p1.requests.WithLabelValues("orders", "negative_hit")))
	require.Equal(t, 1.0, testutil.ToFloat64(p1.loads.WithLabelValues("users", "ok")))
	require.Equal(t, 1.0, testutil.ToFloat64(p1.loads.WithLabelValues("orders", "not_found")))
	n, err := testutil.GatherAndCount(reg, "cache_load_duration_seconds")
	require.NoError(t, err)
	require.Equal(t, 6, n, "one histogram per loader and result")
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestPrometheusConflictingRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Someone else's metric under our name with other labels: a clear error,
	// never a panic.
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "cache_requests_total", Help: "other"}))
	_, err := NewPrometheus(reg)
	require.Error(t, err)
	_, err = NewPrometheus(nil)
	require.ErrorContains(t, err, "Registerer")
}

func TestEventsAreCountedInStatsAndRecorder(t *testing.T) {
	mr, rdb := fakeRedis(t)
	reg := prometheus.NewRegistry()
	p, err := NewPrometheus(reg)
	require.NoError(t, err)
	tb := newTable()
	tb.put("a", "x")
	tb.put("big", strings.Repeat("x", 200))
	boom := errors.New("boom")
	tb.hook = func(_ context.Context, k string, _ int64) error {
		if k == "err" {
			return boom
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{Recorder: p, MaxValueBytes: 100})
	ctx := context.Background()
	_, _ = l.Get(ctx, "a")
	_, _ = l.Get(ctx, "big")
	_, _ = l.Get(ctx, "err")
	putEntry(t, rdb, l.Key("bad"), entry.Header(entry.FlagPayload, 1, 0, 0, 0, 0, ""), "{")
	tb.put("bad", "ok")
	_, _ = l.Get(ctx, "bad")
	require.NoError(t, l.Set(ctx, "a", row{"old", 0})) // version 0 < 1: prevented
	mr.Close()
	_, _ = l.Get(ctx, "a")

	s := l.Stats()
	for _, c := range []struct {
		ev   Event
		want uint64
	}{
		{EventOversize, s.Oversize},
		{EventCorruptEntry, s.CorruptEntries},
		{EventStaleSetPrevented, s.StaleSetsPrevented},
		{EventRedisError, s.RedisErrors},
	} {
		require.NotZero(t, c.want, c.ev.String())
		require.Equal(t, float64(c.want), testutil.ToFloat64(p.events.WithLabelValues("row", c.ev.String())), c.ev.String())
	}
	require.EqualValues(t, 1, s.LoadErrors)
	require.Equal(t, 1.0, testutil.ToFloat64(p.loads.WithLabelValues("row", "error")))
}

func TestEventNames(t *testing.T) {
	seen := map[string]bool{}
	for e := range numEvents {
		name := e.String()
		require.NotEmpty(t, name)
		require.False(t, seen[name], "duplicate %s", name)
		seen[name] = true
	}
	require.Equal(t, "unknown", Event(-1).String())
}

// pendingRec is a Recorder that also records every InvalidationsPending
// report.
type pendingRec struct {
	events
	reports chan int
}

func (p *pendingRec) InvalidationsPending(_ string, n int) { p.reports <- n }

// A PendingRecorder is told the number of queued invalidations when an
// invalidation is queued and when the queue lands; Prometheus exports it as
// cache_invalidations_pending.
func TestInvalidationsPendingReported(t *testing.T) {
	rec := &pendingRec{reports: make(chan int, 16)}
	f := newRetrierFixture(t, &Options{DisableBreaker: true, RedisTimeout: relaxedTimeout, Recorder: rec})
	f.tb.put("a", "a1")
	require.Equal(t, "a1", getRow(t, f.l, "a").Val)

	f.queueA(t, "a2")
	require.Equal(t, 1, <-rec.reports)
	f.mode.Store(rfPass)
	f.l.wakeRetrier()
	select {
	case n := <-rec.reports:
		require.Equal(t, 0, n)
	case <-time.After(10 * time.Second):
		t.Fatal("the queue landing was not reported")
	}

	reg := prometheus.NewPedanticRegistry()
	p, err := NewPrometheus(reg)
	require.NoError(t, err)
	p.InvalidationsPending("users", 3)
	require.Equal(t, 3.0, testutil.ToFloat64(p.pending.WithLabelValues("users")))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// histCount is the number of observations of the histogram child of vec
// with labels.
func histCount(t *testing.T, vec *prometheus.HistogramVec, labels ...string) uint64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(vec.WithLabelValues(labels...).(prometheus.Histogram))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	return mfs[0].GetMetric()[0].GetHistogram().GetSampleCount()
}

func TestPrometheusLatencyByResult(t *testing.T) {
	mr, rdb := fakeRedis(t)
	p, err := NewPrometheus(prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	tb := newTable()
	tb.put("a", "x")
	boom := errors.New("boom")
	tb.hook = func(_ context.Context, k string, _ int64) error {
		if k == "err" {
			return boom
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{Recorder: p, DisableBreaker: true})
	ctx := context.Background()
	_, _ = l.Get(ctx, "a")
	_, _ = l.Get(ctx, "a")
	_, _ = l.Get(ctx, "missing")
	_, _ = l.Get(ctx, "err")
	require.EqualValues(t, 1, histCount(t, p.duration, "row", "ok"))
	require.EqualValues(t, 1, histCount(t, p.duration, "row", "not_found"))
	require.EqualValues(t, 1, histCount(t, p.duration, "row", "error"))

	// Each Get sent at least its read; none failed.
	require.GreaterOrEqual(t, histCount(t, p.redis, "row", "ok"), uint64(4))
	require.Zero(t, histCount(t, p.redis, "row", "error"))
	// A WRONGTYPE reply is an answer.
	require.NoError(t, rdb.HSet(ctx, l.Key("hash"), "f", "v").Err())
	tb.put("hash", "x")
	_, err = l.Get(ctx, "hash")
	require.NoError(t, err)
	require.Zero(t, histCount(t, p.redis, "row", "error"))

	mr.Close()
	okBefore := histCount(t, p.redis, "row", "ok")
	_, err = l.Get(ctx, "a")
	require.NoError(t, err, "fail-open")
	require.NotZero(t, histCount(t, p.redis, "row", "error"), "Redis gone: failed calls observed")
	require.Equal(t, okBefore, histCount(t, p.redis, "row", "ok"))
}

func TestPrometheusCountsWritesByResult(t *testing.T) {
	mr, rdb := fakeRedis(t)
	p, err := NewPrometheus(prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{Recorder: p, MaxValueBytes: 100, InvalidateTimeout: time.Second})
	ctx := context.Background()
	writes := func(op, result string) float64 {
		return testutil.ToFloat64(p.writes.WithLabelValues("row", op, result))
	}

	require.NoError(t, l.Set(ctx, "a", row{"one", 2}))
	require.NoError(t, l.Set(ctx, "a", row{"older", 1}))                  // refused: invalidated
	require.NoError(t, l.Set(ctx, "b", row{strings.Repeat("x", 200), 1})) // too large: invalidated
	require.Equal(t, 1.0, writes("set", "stored"))
	require.Equal(t, 2.0, writes("set", "invalidated"))

	_, err = l.WriteThrough(ctx, "c", func(context.Context) (row, error) { return tb.put("c", "one"), nil })
	require.NoError(t, err)
	_, err = l.WriteThrough(ctx, "c", func(context.Context) (row, error) { return row{}, errors.New("deadlock") })
	require.Error(t, err)
	_, err = l.WriteThrough(ctx, "c", func(ctx context.Context) (row, error) {
		// Another writer between our read of the generation and our set.
		require.NoError(t, l.Invalidate(ctx, "c"))
		return tb.put("c", "two"), nil
	})
	require.NoError(t, err)
	require.Equal(t, 1.0, writes("write_through", "stored"))
	require.Equal(t, 1.0, writes("write_through", "error"))
	require.Equal(t, 1.0, writes("write_through", "invalidated"))

	require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{Key: "a", Version: 3}))
	require.Equal(t, 2.0, writes("invalidate", "invalidated"), "one from inside the write above")

	mr.Close()
	require.ErrorIs(t, l.Invalidate(ctx, "a"), ErrQueued)
	require.Equal(t, 1.0, writes("invalidate", "queued"))
	_, err = l.WriteThrough(ctx, "d", func(context.Context) (row, error) { return tb.put("d", "one"), nil })
	require.NoError(t, err)
	require.Equal(t, 1.0, writes("write_through", "queued"))
	require.Equal(t, 0.0, writes("set", "error"))
	require.Error(t, l.Set(ctx, "e", row{"one", 1}))
	require.Equal(t, 1.0, writes("set", "error"))
}
