package cache

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// probers counts the running probers of every Breaker in the process: the
// goroutines startProber started (a goroutine not yet scheduled shows its
// creator, not its function).
func probers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "created by github.com/f4df6ac3/cache.(*Breaker).startProber ")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// verifyNoLeaks registers, to run after the test's other cleanups if
// called first, a check that the test leaked no goroutine. go-redis's
// redial goroutine, which a pool starts after failed dials, is let be: it
// sleeps a second before it sees that its client was closed.
func verifyNoLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
	})
}

// waitNoProbers waits for every prober to have ended: one that was
// stopped has closed its done channel, but may still be returning.
func waitNoProbers(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool { return probers() == 0 }, 10*time.Second, time.Millisecond, "a prober still runs")
}

// sharedLoaders are Loaders of one table sharing one Breaker, each with a
// Recorder of its own (ev) and one Prometheus for all.
type sharedLoaders struct {
	ls   []*Loader[row]
	ev   []*events
	prom *Prometheus
	tb   *table
}

func newSharedLoaders(t *testing.T, rdb redis.UniversalClient, br *Breaker, n int, opts Options) *sharedLoaders {
	t.Helper()
	prom, err := NewPrometheus(prometheus.NewRegistry())
	require.NoError(t, err)
	s := &sharedLoaders{prom: prom, tb: newTable()}
	for i := range n {
		s.ls = append(s.ls, nil)
		s.ev = append(s.ev, &events{})
		s.add(t, rdb, br, i, opts)
	}
	return s
}

// add makes Loader i ("row<i>").
func (s *sharedLoaders) add(t *testing.T, rdb redis.UniversalClient, br *Breaker, i int, opts Options) {
	t.Helper()
	opts.Breaker = br
	opts.Recorder = teeRecorder{s.prom, s.ev[i]}
	if opts.RedisTimeout == 0 {
		opts.RedisTimeout = testRedisTimeout
	}
	l, err := New(rdb, fmt.Sprint("row", i), s.tb.load, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	s.ls[i] = l
}

// gauge returns Loader i's cache_breaker_state.
func (s *sharedLoaders) gauge(i int) BreakerState {
	return BreakerState(testutil.ToFloat64(s.prom.breaker.WithLabelValues(s.ls[i].Name())))
}

func TestSharedBreakerOptions(t *testing.T) {
	_, rdb := fakeRedis(t)
	br, err := NewBreaker(rdb, nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"DisableBreaker", Options{Breaker: br, DisableBreaker: true}, "DisableBreaker"},
		{"BreakerFailures", Options{Breaker: br, BreakerFailures: 3}, "BreakerFailures"},
		{"BreakerCooldown", Options{Breaker: br, BreakerCooldown: time.Second}, "BreakerCooldown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(rdb, "x", nopLoad, &tc.opts)
			require.ErrorContains(t, err, "Options.Breaker")
			require.ErrorContains(t, err, tc.want)
		})
	}
	t.Run("another client", func(t *testing.T) {
		other := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr, ContextTimeoutEnabled: true})
		defer other.Close()
		_, err := New(other, "x", nopLoad, &Options{Breaker: br})
		require.ErrorContains(t, err, "another Redis client")
	})
	t.Run("NewBreaker", func(t *testing.T) {
		_, err := NewBreaker(nil, nil)
		require.Error(t, err)
		_, err = NewBreaker(rdb, &BreakerOptions{Failures: -1})
		require.ErrorContains(t, err, "Failures")
		_, err = NewBreaker(rdb, &BreakerOptions{Cooldown: -time.Second})
		require.ErrorContains(t, err, "Cooldown")
		noDeadlines := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr})
		defer noDeadlines.Close()
		_, err = NewBreaker(noDeadlines, nil)
		require.ErrorContains(t, err, "ContextTimeoutEnabled")
		b, err := NewBreaker(rdb, &BreakerOptions{Failures: 2, Cooldown: time.Second})
		require.NoError(t, err)
		require.EqualValues(t, 2, b.fails)
		require.Equal(t, time.Second, b.cool)
		require.EqualValues(t, defaultBreakerFails, br.fails)
		require.Equal(t, defaultBreakerCool, br.cool)
	})
	t.Run("shared", func(t *testing.T) {
		a, err := New(rdb, "a", nopLoad, &Options{Breaker: br, RedisTimeout: time.Second})
		require.NoError(t, err)
		defer a.Close()
		b, err := New(rdb, "b", nopLoad, &Options{Breaker: br, RedisTimeout: 3 * time.Second})
		require.NoError(t, err)
		defer b.Close()
		require.Same(t, a.breaker, b.breaker, "one breaker for both")
		require.Same(t, br.core, a.breaker)
		require.EqualValues(t, 3*time.Second, br.probeTimeout.Load(), "the probe waits as long as the most patient member")
		require.Equal(t, BreakerClosed, br.State())
	})
}

// N Loaders sharing a Breaker: the failures of all of them count towards
// opening it, it opens for all at once, one prober runs for all, each
// Loader reports every change, and Redis back closes it for all.
func TestSharedBreakerTripsAndRecoversForAll(t *testing.T) {
	verifyNoLeaks(t) // first: it runs after every other cleanup
	const n, failures = 4, 3
	mr, rdb := fakeRedis(t)
	br, err := NewBreaker(rdb, &BreakerOptions{Failures: failures, Cooldown: 50 * time.Millisecond})
	require.NoError(t, err)
	s := newSharedLoaders(t, rdb, br, n, Options{Prefix: "t:"})
	s.tb.put("a", "a1")
	ctx := context.Background()
	opened := make([]<-chan struct{}, n)
	closed := make([]<-chan struct{}, n)
	for i, ev := range s.ev {
		opened[i], closed[i] = ev.on(EventBreakerOpen), ev.on(EventBreakerClosed)
	}
	waitNoProbers(t) // those of earlier tests

	mr.Close()
	// One failed call from each of the first Loaders: together they open
	// the breaker, where each alone is far from its Failures.
	failOncePerLoader(t, s.ls, failures)
	for i, l := range s.ls {
		wait(t, opened[i], fmt.Sprintf("loader %d to report the breaker open", i))
		st := l.Stats()
		require.NotEqual(t, BreakerClosed, st.Breaker, "loader %d: open (or half-open past the cooldown)", i)
		require.EqualValues(t, 1, st.BreakerOpened, "loader %d", i)
		require.NotEqual(t, BreakerClosed, s.gauge(i), "loader %d's gauge", i)
		require.Equal(t, 1.0, testutil.ToFloat64(s.prom.events.WithLabelValues(l.Name(), "breaker_open")), "loader %d", i)
		wantErrs := 0
		if i < failures {
			wantErrs = 1
		}
		require.EqualValues(t, wantErrs, st.RedisErrors, "loader %d: its own failures only", i)
	}
	require.Equal(t, 1, probers(), "one prober for the shared breaker")

	// Every member, including one that has not failed, skips Redis.
	last := s.ls[n-1]
	require.Equal(t, "a1", getRow(t, last, "a").Val)
	st := last.Stats()
	require.NotZero(t, st.RedisSkipped)
	require.Zero(t, st.RedisErrors)
	require.ErrorIs(t, last.Invalidate(ctx, "a"), ErrRedisUnavailable)

	require.NoError(t, mr.Restart())
	for i := range s.ls {
		wait(t, closed[i], fmt.Sprintf("loader %d to report the breaker closed", i))
	}
	for i, l := range s.ls {
		st := l.Stats()
		require.Equal(t, BreakerClosed, st.Breaker, "loader %d", i)
		require.EqualValues(t, 1, st.BreakerClosed, "loader %d", i)
		require.Equal(t, BreakerClosed, s.gauge(i), "loader %d's gauge", i)
		// Every member saw the same changes: a probe that failed after the
		// cooldown opened the breaker again for all.
		require.Equal(t, s.ls[0].Stats().BreakerOpened, st.BreakerOpened, "loader %d", i)
	}
	require.Equal(t, BreakerClosed, br.State())
	// Hits again, on a Loader that never called Redis while it was down.
	require.NoError(t, last.Invalidate(ctx, "a"))
	require.Equal(t, "a1", getRow(t, last, "a").Val)
	before := last.Stats()
	require.Equal(t, "a1", getRow(t, last, "a").Val)
	require.Equal(t, before.Hits+1, last.Stats().Hits)
}

// Closing a member leaves the prober running for the others; the last
// member's Close stops it. A Loader that joins an open breaker reports it
// open.
func TestSharedBreakerMembership(t *testing.T) {
	verifyNoLeaks(t)
	waitNoProbers(t) // those of earlier tests
	mr, rdb := fakeRedis(t)
	// A cooldown longer than the test: the breaker stays open.
	br, err := NewBreaker(rdb, &BreakerOptions{Failures: 1, Cooldown: time.Hour})
	require.NoError(t, err)
	s := newSharedLoaders(t, rdb, br, 3, Options{Prefix: "t:"})
	ctx := context.Background()
	opened := s.ev[1].on(EventBreakerOpen)
	mr.Close()
	require.Error(t, s.ls[0].Set(ctx, "z", row{"z", 1}))
	wait(t, opened, "loader 1 to report the breaker open")
	require.Equal(t, 1, probers())

	require.NoError(t, s.ls[0].Close())
	require.Equal(t, 1, probers(), "the others' prober outlives a member's Close")
	require.Equal(t, BreakerOpen, br.State())
	require.Equal(t, BreakerOpen, s.ls[1].BreakerState())
	require.NoError(t, s.ls[0].Close(), "Close twice")

	// A Loader that joins now starts open, and says so.
	s.ev = append(s.ev, &events{})
	s.ls = append(s.ls, nil)
	s.add(t, rdb, br, 3, Options{Prefix: "t:"})
	joined := s.ls[3]
	st := joined.Stats()
	require.Equal(t, BreakerOpen, st.Breaker)
	require.EqualValues(t, 1, st.BreakerOpened)
	require.Equal(t, BreakerOpen, s.gauge(3))
	require.ErrorIs(t, joined.Invalidate(ctx, "a"), ErrRedisUnavailable)
	require.Equal(t, 1, probers())
	require.EqualValues(t, 1, s.ls[1].Stats().BreakerOpened, "a join is not a change for the others")

	for _, l := range s.ls[1:] {
		require.Equal(t, 1, probers(), "a member is left")
		require.NoError(t, l.Close())
	}
	waitNoProbers(t) // the last member's Close stopped it

	// The Breaker outlives its members: a new one finds it open, and its
	// prober starts again.
	s.ev[0] = &events{}
	s.add(t, rdb, br, 0, Options{Prefix: "t:"})
	require.Equal(t, BreakerOpen, s.ls[0].BreakerState())
	require.Equal(t, 1, probers())
	require.NoError(t, s.ls[0].Close())
	waitNoProbers(t)
}

// A Loader that closes stops reporting: changes after its Close are
// counted by the members left only.
func TestSharedBreakerClosedMemberReportsNothing(t *testing.T) {
	mr, rdb := fakeRedis(t)
	br, err := NewBreaker(rdb, &BreakerOptions{Failures: 1, Cooldown: time.Hour})
	require.NoError(t, err)
	s := newSharedLoaders(t, rdb, br, 2, Options{Prefix: "t:"})
	require.NoError(t, s.ls[0].Close())
	mr.Close()
	require.Error(t, s.ls[1].Set(context.Background(), "z", row{"z", 1}))
	require.Equal(t, BreakerOpen, s.ls[1].BreakerState())
	require.EqualValues(t, 1, s.ls[1].Stats().BreakerOpened)
	require.Zero(t, s.ls[0].Stats().BreakerOpened)
	require.Equal(t, BreakerOpen, s.ls[0].BreakerState(), "the state is the Breaker's")
}

// On a Redis Cluster client the members share the per-master breakers: a
// master's failures through one Loader open its breaker for all.
func TestSharedBreakerClusterPerMaster(t *testing.T) {
	mr, _ := fakeRedis(t)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}, ContextTimeoutEnabled: true, MaxRedirects: -1})
	t.Cleanup(func() { cc.Close() })
	br, err := NewBreaker(cc, &BreakerOptions{Failures: 1, Cooldown: time.Hour})
	require.NoError(t, err)
	require.NotNil(t, br.nodes)
	s := newSharedLoaders(t, cc, br, 2, Options{Prefix: "t:"})
	s.tb.put("a", "a1")
	a, b := s.ls[0], s.ls[1]
	require.Same(t, br.nodes, a.cluster.nodes)
	require.Same(t, br.nodes, b.cluster.nodes)
	require.Equal(t, "a1", getRow(t, a, "a").Val)
	require.Equal(t, "a1", getRow(t, b, "a").Val)
	ctx := context.Background()
	budget := redisBudget{left: time.Second}
	node := a.breakerFor(ctx, &budget, a.Key("a"))
	require.NotSame(t, br.core, node, "a master's breaker")
	require.Same(t, node, b.breakerFor(ctx, &budget, b.Key("a")), "the same for both")

	opened := s.ev[1].on(EventBreakerOpen)
	mr.Close()
	require.Error(t, a.Set(ctx, "a", row{"a", 1})) // through a's master breaker
	wait(t, opened, "loader 1 to report the breaker open")
	require.Equal(t, BreakerOpen, b.BreakerState())
	require.Equal(t, BreakerClosed, BreakerState(br.core.mirror.Load()), "only the master's breaker opened")
	require.ErrorIs(t, b.Set(ctx, "a", row{"a", 2}), ErrRedisUnavailable)
	for i := range s.ls {
		require.EqualValues(t, 1, s.ls[i].Stats().BreakerOpened, "loader %d", i)
		require.Equal(t, BreakerOpen, s.gauge(i), "loader %d", i)
	}
}

// failOncePerLoader makes one failing Redis call from each of the first n
// Loaders, requiring the shared breaker still closed before each: together
// they open it, where each alone is far from its Failures.
func failOncePerLoader(t *testing.T, ls []*Loader[row], n int) {
	t.Helper()
	for i := range n {
		for j, l := range ls {
			require.Equal(t, BreakerClosed, l.BreakerState(), "loader %d before failure %d", j, i+1)
		}
		err := ls[i].Set(context.Background(), "z", row{"z", 1}) // one Redis call
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrRedisUnavailable, "failure %d: Redis was called", i+1)
	}
}
