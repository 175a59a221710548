package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestBreakerOpens(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures int // Options.BreakerFailures
		want     int // failed calls that open the breaker
	}{
		{"default", 0, 5},
		{"one", 1, 1},
		{"three", 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr, rdb := fakeRedis(t)
			prom, err := NewPrometheus(prometheus.NewRegistry())
			require.NoError(t, err)
			ev := &events{}
			opened := ev.on(EventBreakerOpen)
			tb := newTable()
			tb.put("a", "a1")
			tb.put("s", "s1")
			// Loads of "s" hold until release, counting how many run at once.
			var inflight loadsInFlight
			started := make(chan struct{}, 64)
			release := make(chan struct{})
			tb.hook = func(_ context.Context, key string, _ int64) error {
				if key == "s" {
					inflight.enter()
					defer inflight.leave()
					started <- struct{}{}
					<-release
				}
				return nil
			}
			// A cooldown longer than the test: no probe reaches Redis.
			// (A fixed prefix: newLoader's cleanup of a unique one would wait
			// for the closed Redis.)
			l := newLoader(t, rdb, tb, &Options{Prefix: "t:", BreakerFailures: tc.failures, BreakerCooldown: time.Hour,
				Recorder: teeRecorder{prom, ev}})
			ctx := context.Background()
			gauge := func() float64 { return testutil.ToFloat64(prom.breaker.WithLabelValues("row")) }

			mr.Close()
			for i := 1; i <= tc.want; i++ {
				require.Equal(t, BreakerClosed, l.BreakerState(), "before failure %d", i)
				err := l.Set(ctx, "z", row{"z", 1}) // one Redis call (Invalidate retries)
				require.Error(t, err)
				require.NotErrorIs(t, err, ErrRedisUnavailable, "failure %d: Redis was called", i)
			}
			wait(t, opened, "the breaker to open")
			s := l.Stats()
			require.Equal(t, BreakerOpen, l.BreakerState())
			require.Equal(t, BreakerOpen, s.Breaker)
			require.EqualValues(t, 1, s.BreakerOpened)
			require.EqualValues(t, tc.want, s.RedisErrors)
			require.Zero(t, s.RedisSkipped)
			require.Equal(t, float64(BreakerOpen), gauge())
			require.Equal(t, 1.0, testutil.ToFloat64(prom.events.WithLabelValues("row", "breaker_open")))

			// Gets answer from the load and do not call Redis.
			for i := range 3 {
				v, err := l.Get(ctx, "a")
				require.NoError(t, err)
				require.Equal(t, "a1", v.Val)
				s2 := l.Stats()
				require.Greater(t, s2.RedisSkipped, s.RedisSkipped, "Get %d skipped Redis", i)
				require.Equal(t, s.RedisErrors, s2.RedisErrors, "Get %d did not call Redis", i)
				require.Equal(t, s.Loads+1, s2.Loads, "Get %d loaded", i)
				s = s2
			}

			// Set and Invalidate fail at once.
			err = l.Set(ctx, "a", row{"a2", 2})
			require.ErrorIs(t, err, ErrRedisUnavailable)
			require.ErrorIs(t, l.Invalidate(ctx, "a"), ErrRedisUnavailable)
			require.ErrorIs(t, l.Invalidate(ctx, "a", "b"), ErrRedisUnavailable)

			// Still one load of a key at a time.
			const n = 20
			errs := make(chan error, n)
			get := func() {
				v, err := l.Get(ctx, "s")
				if err == nil && v.Val != "s1" {
					err = fmt.Errorf("got %q", v.Val)
				}
				errs <- err
			}
			go get()
			<-started // the first load holds
			for range n - 1 {
				go get()
			}
			close(release)
			for range n {
				require.NoError(t, <-errs)
			}
			require.EqualValues(t, 1, inflight.max.Load(), "one load of a key at a time")

			s = l.Stats()
			require.EqualValues(t, tc.want, s.RedisErrors, "no Redis call while the breaker is open")
			require.EqualValues(t, 1, s.BreakerOpened)
			require.Zero(t, s.BreakerClosed)
			require.Equal(t, BreakerOpen, l.BreakerState())
			require.Equal(t, float64(BreakerOpen), gauge())
		})
	}
}

func TestBreakerRecovers(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := watchCmd(rdb, "fill")
	prom, err := NewPrometheus(prometheus.NewRegistry())
	require.NoError(t, err)
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	halfOpen := ev.on(EventBreakerHalfOpen)
	closed := ev.on(EventBreakerClosed)
	tb := newTable()
	tb.put("a", "a1")
	l := newLoader(t, rdb, tb, &Options{BreakerFailures: 2, BreakerCooldown: 50 * time.Millisecond,
		RedisTimeout: 250 * time.Millisecond, Recorder: teeRecorder{prom, ev}})
	ctx := context.Background()
	gauge := func() float64 { return testutil.ToFloat64(prom.breaker.WithLabelValues("row")) }

	require.Equal(t, "a1", getRow(t, l, "a").Val)
	waitKey(t, fills, "the fill")
	require.Equal(t, float64(BreakerClosed), gauge())

	mr.Close()
	for range 2 {
		require.Error(t, l.Set(ctx, "z", row{"z", 1})) // one Redis call each
	}
	wait(t, opened, "the breaker to open")
	require.NotEqual(t, float64(BreakerClosed), gauge(), "open, or half-open once the cooldown passed")

	require.NoError(t, mr.Restart()) // with the entry as it was
	// The prober's PING closes the breaker; Gets meanwhile answer.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case <-closed:
			done = true
		case <-tick.C:
			require.Equal(t, "a1", getRow(t, l, "a").Val)
		case <-timeout:
			t.Fatalf("the breaker did not close: %v", l.BreakerState())
		}
	}
	wait(t, halfOpen, "the half-open state before closing")
	require.Equal(t, BreakerClosed, l.BreakerState())
	require.Equal(t, float64(BreakerClosed), gauge())
	s := l.Stats()
	require.Equal(t, BreakerClosed, s.Breaker)
	require.EqualValues(t, 1, s.BreakerClosed)
	require.GreaterOrEqual(t, s.BreakerOpened, uint64(1))
	require.Equal(t, float64(s.BreakerOpened), testutil.ToFloat64(prom.events.WithLabelValues("row", "breaker_open")))
	require.Equal(t, 1.0, testutil.ToFloat64(prom.events.WithLabelValues("row", "breaker_closed")))

	// Gets hit Redis again.
	cmds := mr.CommandCount()
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	s2 := l.Stats()
	require.Equal(t, s.Hits+1, s2.Hits)
	require.Equal(t, s.Loads, s2.Loads)
	require.Equal(t, s.RedisSkipped, s2.RedisSkipped)
	require.Greater(t, mr.CommandCount(), cmds)
	require.NoError(t, l.Invalidate(ctx, "a"), "Invalidate reaches Redis again")
}

func TestBreakerDisabled(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "a1")
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", DisableBreaker: true, BreakerFailures: 1,
		RedisTimeout: 10 * time.Millisecond, Recorder: ev})
	ctx := context.Background()
	mr.Close()
	for i := range 10 {
		err := l.Set(ctx, "a", row{"a", 1})
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrRedisUnavailable, "call %d reached for Redis", i)
	}
	before := l.Stats().RedisErrors
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	err := l.Set(ctx, "a", row{"a2", 2})
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrRedisUnavailable)

	s := l.Stats()
	require.Greater(t, s.RedisErrors, before, "the Get still called Redis")
	require.Zero(t, s.RedisSkipped)
	require.Zero(t, s.BreakerOpened)
	require.Equal(t, BreakerClosed, s.Breaker)
	require.Equal(t, BreakerClosed, l.BreakerState())
	select {
	case <-opened:
		t.Fatal("a disabled breaker opened")
	default:
	}
}

// Recorder.Count does not run under the circuit breaker's lock for breaker
// events, so a Recorder may read the Loader's state (Stats, BreakerState).
func TestRecorderMayReadStatsOnBreakerEvent(t *testing.T) {
	mr, rdb := fakeRedis(t)
	var l atomic.Pointer[Loader[row]]
	rec := recorderFunc(func(e Event) {
		if e == EventBreakerOpen {
			_ = l.Load().Stats() // e.g. log the state on every breaker change
		}
	})
	l.Store(newLoader(t, rdb, newTable(), &Options{Prefix: "t:", BreakerFailures: 1, Recorder: rec}))
	mr.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Load().Invalidate(context.Background(), "a")
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Invalidate deadlocked: the Recorder called Stats while the breaker's lock was held")
	}
}
