package cache

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
)

// Unit tests of the resilience features on miniredis: options, the client
// check, the circuit breaker, queued invalidations, early refresh, stale
// serving, read bypass and read coalescing.

// ---------------------------------------------------------------------------
// Helpers

// resRelaxed is the RedisTimeout of tests about something other than
// timing: a budget no Redis call runs out of, even on a loaded machine.
// (Tests that close Redis keep short ones: go-redis retries a refused
// connection for almost 2s, until the budget ends.)
const resRelaxed = 5 * time.Second

// errResUnreachable is what resHook answers for a command it fails: a
// client-side failure, like a Redis that cannot be reached.
var errResUnreachable = errors.New("resilience test: redis unreachable")

// resHook is a go-redis hook that lets a test watch, hold or fail the
// commands of one client. Commands are named by resCmd. Add it before the
// client is used; its funcs must be safe for concurrent use.
type resHook struct {
	// before runs before a command is sent; an error fails the command
	// without sending it.
	before func(name, key string) error
	// after runs once the reply has arrived; it may hold the reply.
	after func(name, key string, err error)
}

func (h *resHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *resHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name, key := resCmd(cmd)
		if h.before != nil {
			if err := h.before(name, key); err != nil {
				return err
			}
		}
		err := next(ctx, cmd)
		if h.after != nil {
			h.after(name, key, err)
		}
		return err
	}
}

func (h *resHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.before != nil {
			for _, cmd := range cmds {
				name, key := resCmd(cmd)
				if err := h.before(name, key); err != nil {
					for _, c := range cmds {
						c.SetErr(err)
					}
					return err
				}
			}
		}
		err := next(ctx, cmds)
		if h.after != nil {
			for _, cmd := range cmds {
				name, key := resCmd(cmd)
				h.after(name, key, cmd.Err())
			}
		}
		return err
	}
}

var resScripts = map[string]string{
	script.SHA.Acquire:    "acquire",
	script.SHA.Fill:       "fill",
	script.SHA.Set:        "set",
	script.SHA.Invalidate: "invalidate",
	script.SHA.Release:    "release",
}

// resCmd names a command: the library script it runs ("acquire", "fill",
// "set", "invalidate", "release"), or else its lower-case name ("getrange");
// key is its first key.
func resCmd(cmd redis.Cmder) (name, key string) {
	args := cmd.Args()
	name = strings.ToLower(cmd.Name())
	switch name {
	case "evalsha", "eval":
		if len(args) < 4 {
			return name, ""
		}
		id, _ := args[1].(string)
		if name == "eval" {
			sum := sha1.Sum([]byte(id))
			id = hex.EncodeToString(sum[:])
		}
		if s, ok := resScripts[id]; ok {
			name = s
		}
		key, _ = args[3].(string)
	default:
		if len(args) >= 2 {
			key, _ = args[1].(string)
		}
	}
	return name, key
}

// resWatch returns a channel that receives the key of every successful run
// of the named command or script on rdb. Call it before rdb is used.
func resWatch(rdb *redis.Client, name string) <-chan string {
	ch := make(chan string, 64)
	rdb.AddHook(&resHook{after: func(n, key string, err error) {
		if n == name && err == nil {
			select {
			case ch <- key:
			default:
			}
		}
	}})
	return ch
}

func resWaitKey(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case k := <-ch:
		return k
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

// resTee sends every event to each of its Recorders.
// resTee passes every event to each of its Recorders, the last one last:
// a test that waits on an event from an events Recorder puts it last, so
// that the others have seen the event when the wait ends.
type resTee []Recorder

func (rt resTee) Count(loader string, e Event) {
	for _, r := range rt {
		r.Count(loader, e)
	}
}

func (rt resTee) ObserveLoad(loader string, d time.Duration, err error) {
	for _, r := range rt {
		r.ObserveLoad(loader, d, err)
	}
}

// resInFlight counts the loads in progress and the most ever seen at once.
type resInFlight struct{ now, max atomic.Int64 }

func (f *resInFlight) enter() {
	n := f.now.Add(1)
	for {
		m := f.max.Load()
		if n <= m || f.max.CompareAndSwap(m, n) {
			return
		}
	}
}

func (f *resInFlight) leave() { f.now.Add(-1) }

// resArrivalCtx is a context that closes arrived on the nth call of its
// Done method: the library calls Done when a Get starts waiting (for a
// coalesced read, for a flight), so a test learns that the Get is parked
// without sleeping. Its parent is Background, whose Done is nil, so that
// context.WithTimeout calls Done once (and its cancel once more) and starts
// no goroutine.
type resArrivalCtx struct {
	context.Context
	nth     int32
	calls   atomic.Int32
	arrived chan struct{}
}

func newResArrivalCtx(nth int32) *resArrivalCtx {
	return &resArrivalCtx{Context: context.Background(), nth: nth, arrived: make(chan struct{})}
}

func (c *resArrivalCtx) Done() <-chan struct{} {
	if c.calls.Add(1) == c.nth {
		close(c.arrived)
	}
	return c.Context.Done()
}

// resSeed stores r as key's entry with Set: unlike a Get that fills, it
// leaves no flight behind that a later Get could join.
func resSeed(t *testing.T, l *Loader[row], key string, r row) {
	t.Helper()
	require.NoError(t, l.Set(context.Background(), key, r))
}

func resGetRow(t *testing.T, l *Loader[row], key string) row {
	t.Helper()
	v, err := l.Get(context.Background(), key)
	require.NoError(t, err)
	return v
}

// resGets runs n Gets of key at once and returns their values; it fails
// the test on any error.
func resGets(t *testing.T, l *Loader[row], key string, n int) []row {
	t.Helper()
	type res struct {
		v   row
		err error
	}
	out := make(chan res, n)
	for range n {
		go func() {
			v, err := l.Get(context.Background(), key)
			out <- res{v, err}
		}()
	}
	vals := make([]row, 0, n)
	for range n {
		r := <-out
		require.NoError(t, r.err)
		vals = append(vals, r.v)
	}
	return vals
}

// resRecorderFunc is a Recorder that calls f for every event.
type resRecorderFunc func(Event)

func (f resRecorderFunc) Count(_ string, e Event)                  { f(e) }
func (f resRecorderFunc) ObserveLoad(string, time.Duration, error) {}

// resBlackhole is a go-redis hook for a blackholed Redis: every command
// waits until its context ends.
type resBlackhole struct{}

func (resBlackhole) DialHook(next redis.DialHook) redis.DialHook { return next }

func (resBlackhole) ProcessHook(redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, _ redis.Cmder) error {
		<-ctx.Done()
		return ctx.Err()
	}
}

func (resBlackhole) ProcessPipelineHook(redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, _ []redis.Cmder) error {
		<-ctx.Done()
		return ctx.Err()
	}
}

// ---------------------------------------------------------------------------
// 1. Options

func TestResilienceOptionsValidate(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"negative BreakerFailures", Options{BreakerFailures: -1}, "Options.BreakerFailures must be in [0, 2^32)"},
		{"negative BreakerCooldown", Options{BreakerCooldown: -time.Second}, "Options.BreakerCooldown is negative"},
		{"negative EarlyRefreshBeta", Options{EarlyRefreshBeta: -0.5}, "Options.EarlyRefreshBeta must be a finite number >= 0"},
		{"negative MaxStale", Options{MaxStale: -time.Second}, "Options.MaxStale is negative"},
		{"negative MaxStale with StaleIfError", Options{StaleIfError: true, MaxStale: -1}, "Options.MaxStale is negative"},
		{"StaleWhileRevalidate without MaxStale", Options{StaleWhileRevalidate: true}, "need Options.MaxStale > 0"},
		{"StaleIfError without MaxStale", Options{StaleIfError: true}, "need Options.MaxStale > 0"},
		{"both without MaxStale", Options{StaleWhileRevalidate: true, StaleIfError: true}, "need Options.MaxStale > 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			l, err := New(rdb, "x", nopLoad, &opts)
			require.Nil(t, l)
			require.ErrorContains(t, err, "cache: ")
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, tc.opts, opts, "New must not modify the caller's Options")
		})
	}
}

func TestResilienceOptionsDefaults(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, tc := range []struct {
		name      string
		opts      *Options
		fails     int
		cooldown  time.Duration
		beta      float64
		breaker   bool // a breaker exists
		noEarly   bool
		swr, sie  bool
		maxStale  time.Duration
		tombstone time.Duration
	}{
		{name: "nil", opts: nil, fails: 5, cooldown: defaultBreakerCool, beta: 1, breaker: true, tombstone: 10 * time.Second},
		{name: "zero", opts: &Options{}, fails: 5, cooldown: defaultBreakerCool, beta: 1, breaker: true, tombstone: 10 * time.Second},
		{name: "explicit", opts: &Options{BreakerFailures: 2, BreakerCooldown: 3 * time.Second, EarlyRefreshBeta: 0.5},
			fails: 2, cooldown: 3 * time.Second, beta: 0.5, breaker: true, tombstone: 10 * time.Second},
		{name: "DisableBreaker", opts: &Options{DisableBreaker: true}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			tombstone: 10 * time.Second},
		{name: "DisableEarlyRefresh", opts: &Options{DisableEarlyRefresh: true}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			breaker: true, noEarly: true, tombstone: 10 * time.Second},
		{name: "MaxStale alone is ignored", opts: &Options{MaxStale: time.Hour}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			breaker: true, tombstone: 10 * time.Second},
		{name: "StaleWhileRevalidate", opts: &Options{StaleWhileRevalidate: true, MaxStale: time.Minute}, fails: 5,
			cooldown: defaultBreakerCool, beta: 1, breaker: true, swr: true, maxStale: time.Minute, tombstone: time.Minute},
		{name: "StaleIfError, short MaxStale", opts: &Options{StaleIfError: true, MaxStale: time.Second}, fails: 5,
			cooldown: defaultBreakerCool, beta: 1, breaker: true, sie: true, maxStale: time.Second, tombstone: 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before Options
			if tc.opts != nil {
				before = *tc.opts
			}
			l, err := New(rdb, "x", nopLoad, tc.opts)
			require.NoError(t, err)
			defer l.Close()
			if tc.opts != nil {
				require.Equal(t, before, *tc.opts, "New must not modify the caller's Options")
			}
			s := l.s
			require.Equal(t, tc.fails, s.breakerFails)
			require.Equal(t, tc.cooldown, s.breakerCool)
			require.Equal(t, tc.beta, s.beta)
			require.Equal(t, !tc.breaker, s.noBreaker)
			require.Equal(t, tc.breaker, l.breaker != nil)
			require.Equal(t, tc.noEarly, s.noEarly)
			require.Equal(t, tc.swr, s.swr)
			require.Equal(t, tc.sie, s.staleIfError)
			require.Equal(t, tc.maxStale, s.maxStale)
			require.Equal(t, tc.tombstone, s.tombstoneTTL, "a tombstone lives as long as its payload may be served")
			require.Equal(t, BreakerClosed, l.BreakerState())
			st := l.Stats()
			require.Equal(t, BreakerClosed, st.Breaker)
			require.False(t, st.ReadBypass)
		})
	}
}

// ---------------------------------------------------------------------------
// 2. The client must honour context deadlines

func TestResilienceNewRequiresContextTimeout(t *testing.T) {
	mr, _ := fakeRedis(t)
	unreachable := "127.0.0.1:1" // never dialled: New does not call Redis
	for _, tc := range []struct {
		name   string
		client func(on bool) redis.UniversalClient
	}{
		{"Client", func(on bool) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: on})
		}},
		{"ClusterClient", func(on bool) redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{unreachable}, ContextTimeoutEnabled: on})
		}},
		{"Ring", func(on bool) redis.UniversalClient {
			return redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"shard": mr.Addr()}, ContextTimeoutEnabled: on})
		}},
		{"FailoverClient", func(on bool) redis.UniversalClient {
			return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "main", SentinelAddrs: []string{unreachable},
				ContextTimeoutEnabled: on})
		}},
		{"FailoverClusterClient", func(on bool) redis.UniversalClient {
			return redis.NewFailoverClusterClient(&redis.FailoverOptions{MasterName: "main", SentinelAddrs: []string{unreachable},
				ContextTimeoutEnabled: on})
		}},
		{"UniversalClient", func(on bool) redis.UniversalClient {
			return redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}, ContextTimeoutEnabled: on})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			off := tc.client(false)
			defer off.Close()
			l, err := New(off, "x", nopLoad, nil)
			require.Nil(t, l)
			require.ErrorContains(t, err, "cache: ")
			require.ErrorContains(t, err, "ContextTimeoutEnabled")

			on := tc.client(true)
			defer on.Close()
			l, err = New(on, "x", nopLoad, nil)
			require.NoError(t, err)
			require.NoError(t, l.Close())
		})
	}
}

// ---------------------------------------------------------------------------
// 3. Circuit breaker

func TestResilienceBreakerOpens(t *testing.T) {
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
			var inflight resInFlight
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
				Recorder: resTee{prom, ev}})
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

func TestResilienceBreakerRecovers(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := resWatch(rdb, "fill")
	prom, err := NewPrometheus(prometheus.NewRegistry())
	require.NoError(t, err)
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	halfOpen := ev.on(EventBreakerHalfOpen)
	closed := ev.on(EventBreakerClosed)
	tb := newTable()
	tb.put("a", "a1")
	l := newLoader(t, rdb, tb, &Options{BreakerFailures: 2, BreakerCooldown: 50 * time.Millisecond,
		RedisTimeout: 250 * time.Millisecond, Recorder: resTee{prom, ev}})
	ctx := context.Background()
	gauge := func() float64 { return testutil.ToFloat64(prom.breaker.WithLabelValues("row")) }

	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	resWaitKey(t, fills, "the fill")
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
			require.Equal(t, "a1", resGetRow(t, l, "a").Val)
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
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	s2 := l.Stats()
	require.Equal(t, s.Hits+1, s2.Hits)
	require.Equal(t, s.Loads, s2.Loads)
	require.Equal(t, s.RedisSkipped, s2.RedisSkipped)
	require.Greater(t, mr.CommandCount(), cmds)
	require.NoError(t, l.Invalidate(ctx, "a"), "Invalidate reaches Redis again")
}

func TestResilienceBreakerDisabled(t *testing.T) {
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
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
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

// ---------------------------------------------------------------------------
// 4. Queued invalidations

func TestResilienceQueuedInvalidationLandsWhenBreakerCloses(t *testing.T) {
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
	// queue (see TestResilienceRegressionRetriedCountedWhilePending).
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

func TestResilienceQueuedInvalidationKeepsOrder(t *testing.T) {
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

// ---------------------------------------------------------------------------
// 5. Early refresh (XFetch)

func TestResilienceRefreshDue(t *testing.T) {
	_, rdb := fakeRedis(t)
	const draws = 10000
	for _, tc := range []struct {
		name      string
		opts      Options
		delta     int64 // last load, ms
		remaining int64 // until the soft expiry, ms
		noSoft    bool  // the entry has no soft expiry
		want      float64
	}{
		{name: "r = beta·delta", delta: 100, remaining: 100, want: math.Exp(-1)},
		{name: "beta scales delta", opts: Options{EarlyRefreshBeta: 2}, delta: 50, remaining: 100, want: math.Exp(-1)},
		{name: "small beta refreshes later", opts: Options{EarlyRefreshBeta: 0.5}, delta: 100, remaining: 50, want: math.Exp(-1)},
		{name: "r = beta·delta/2", delta: 200, remaining: 100, want: math.Exp(-0.5)},
		{name: "r = 3·beta·delta", delta: 100, remaining: 300, want: math.Exp(-3)},
		{name: "right before expiry", delta: 1e12, remaining: 1, want: 1},
		{name: "41·beta·delta: never", delta: 100, remaining: 4100, want: 0},
		{name: "far from expiry: never", delta: 1, remaining: 300_000, want: 0},
		{name: "DisableEarlyRefresh: never", opts: Options{DisableEarlyRefresh: true}, delta: 1e12, remaining: 1, want: 0},
		{name: "no load duration: never", delta: 0, remaining: 1, want: 0},
		{name: "no soft expiry: never", delta: 1e12, remaining: 1, noSoft: true, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			l, err := New(rdb, "x", nopLoad, &opts)
			require.NoError(t, err)
			defer l.Close()
			now := int64(1_800_000_000_000)
			e := entry.Entry{Exists: true, HasPayload: true, Generation: 1, SoftExpiry: now + tc.remaining, Delta: tc.delta}
			if tc.noSoft {
				e.SoftExpiry = 0
			}
			n := 0
			for range draws {
				if l.refreshDue(&e, now) {
					n++
				}
			}
			switch tc.want {
			case 0:
				require.Zero(t, n)
			case 1:
				require.Equal(t, draws, n)
			default:
				// 0.03 is more than 6 standard deviations at p = e^-1.
				require.InDelta(t, tc.want, float64(n)/draws, 0.03)
			}
		})
	}
}

// resNearExpiry makes key's entry still fresh but so close to its soft
// expiry, compared with a pretended last load time, that a hit refreshes
// it with probability 1 - 2e-7.
func resNearExpiry(t *testing.T, l *Loader[row], key string) (soft int64) {
	t.Helper()
	soft = l.clock.serverNow() + 2000
	editEntry(t, l.rdb, l.Key(key), func(e *entry.Entry) { e.SoftExpiry, e.Delta = soft, 1e7 })
	return soft
}

func TestResilienceEarlyRefresh(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := resWatch(rdb, "fill")
	rdbB := newClient(t, mr.Addr())
	acquiresB := resWatch(rdbB, "acquire")

	tb := newTable()
	started := make(chan int64, 16)
	release := make(chan struct{})
	tb.hook = func(_ context.Context, _ string, n int64) error {
		started <- n
		<-release
		return nil
	}
	ev := &events{}
	refreshed := ev.on(EventRefresh)
	opts := Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: resRelaxed, Recorder: ev}
	l := newLoader(t, rdb, tb, &opts)
	resSeed(t, l, "a", tb.put("a", "a1"))
	key := l.Key("a")

	soft := resNearExpiry(t, l, "a")
	tb.put("a", "a2") // the table changed; the entry still holds a1

	// The hit answers at once with the current value, while the refresh's
	// load is held.
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	wait(t, refreshed, "the refresh to start")
	require.EqualValues(t, 1, <-started)
	s := l.Stats()
	require.EqualValues(t, 1, s.Hits)
	require.EqualValues(t, 1, s.Refreshes)

	// Concurrent hits start no other refresh in this process.
	for _, v := range resGets(t, l, "a", 20) {
		require.Equal(t, "a1", v.Val)
	}
	s = l.Stats()
	require.EqualValues(t, 21, s.Hits)
	require.EqualValues(t, 1, s.Refreshes)

	// Another process's refresh finds the lease held and does not load.
	tbB := newTable()
	tbB.put("a", "a2")
	evB := &events{}
	refreshedB := evB.on(EventRefresh)
	b := newLoader(t, rdbB, tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: resRelaxed,
		Recorder: evB})
	require.Equal(t, "a1", resGetRow(t, b, "a").Val)
	wait(t, refreshedB, "B's refresh to start")
	resWaitKey(t, acquiresB, "B's lease request")
	require.NoError(t, b.Close()) // waits for B's refresh to end
	require.Zero(t, tbB.loads.Load(), "B's refresh found the lease held")

	// The refresh fills the new value with a new soft expiry.
	close(release)
	require.Equal(t, key, resWaitKey(t, fills, "the refresh's fill"))
	h := fields(t, rdb, key)
	require.Equal(t, mustJSON(t, row{"a2", 2}), h["p"])
	newSoft, err := strconv.ParseInt(h["s"], 10, 64)
	require.NoError(t, err)
	require.Greater(t, newSoft, soft)
	require.Greater(t, newSoft, l.clock.serverNow()+50_000, "about TTL ahead")
	require.NotEqual(t, "10000000", h["d"], "the real load time is stored")
	require.NotContains(t, h, entry.LeaseOwner)

	require.Equal(t, "a2", resGetRow(t, l, "a").Val)
	require.EqualValues(t, 1, tb.loads.Load(), "one refresh load")
	s = l.Stats()
	require.EqualValues(t, 22, s.Hits)
	require.EqualValues(t, 1, s.Refreshes)
	require.Zero(t, s.Misses)
}

func TestResilienceEarlyRefreshDisabled(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{DisableEarlyRefresh: true, RedisTimeout: resRelaxed})
	resSeed(t, l, "a", tb.put("a", "a1"))
	resNearExpiry(t, l, "a")
	for _, v := range resGets(t, l, "a", 10) {
		require.Equal(t, "a1", v.Val)
	}
	s := l.Stats()
	require.Zero(t, s.Refreshes)
	require.EqualValues(t, 10, s.Hits)
	require.Zero(t, tb.loads.Load())
}

// ---------------------------------------------------------------------------
// 6. Stale-while-revalidate

func TestResilienceStaleWhileRevalidate(t *testing.T) {
	const (
		ttl      = time.Minute
		maxStale = time.Minute
	)
	for _, tc := range []struct {
		name  string
		age   func(t *testing.T, mr *miniredis.Miniredis, l *Loader[row])
		stale bool // served stale while a refresh loads
	}{
		{"expired within MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - 5000 })
		}, true},
		{"invalidated", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			require.NoError(t, l.Invalidate(context.Background(), "a"))
			h := fields(t, l.rdb, l.Key("a"))
			require.Contains(t, h, entry.Payload, "Invalidate keeps the payload for stale serving")
			require.Equal(t, "2", h["f"])
		}, true},
		{"expired beyond MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - maxStale.Milliseconds() - 5000 })
		}, false},
		{"invalidated beyond MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - maxStale.Milliseconds() - 5000 })
			require.NoError(t, l.Invalidate(context.Background(), "a"))
		}, false},
		{"gone from Redis", func(t *testing.T, mr *miniredis.Miniredis, _ *Loader[row]) {
			mr.FastForward(ttl + maxStale + time.Second)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr, rdb := fakeRedis(t)
			fills := resWatch(rdb, "fill")
			tb := newTable()
			started := make(chan int64, 16)
			release := make(chan struct{})
			tb.hook = func(_ context.Context, _ string, n int64) error {
				if tc.stale {
					started <- n
					<-release
				}
				return nil
			}
			ev := &events{}
			refreshed := ev.on(EventRefresh)
			l := newLoader(t, rdb, tb, &Options{TTL: ttl, DisableJitter: true, StaleWhileRevalidate: true,
				MaxStale: maxStale, RedisTimeout: resRelaxed, Recorder: ev})
			resSeed(t, l, "a", tb.put("a", "a1"))
			require.Equal(t, ttl+maxStale, mr.TTL(l.Key("a")), "kept MaxStale past its TTL")
			tb.put("a", "a2")
			tc.age(t, mr, l)

			if !tc.stale {
				require.Equal(t, "a2", resGetRow(t, l, "a").Val, "not served: loaded")
				s := l.Stats()
				require.Zero(t, s.Stale)
				require.Zero(t, s.Refreshes)
				require.EqualValues(t, 1, s.Misses)
				return
			}
			// Served at once while the refresh's load is held.
			require.Equal(t, "a1", resGetRow(t, l, "a").Val)
			wait(t, refreshed, "the refresh")
			require.EqualValues(t, 1, <-started)
			require.Equal(t, "a1", resGetRow(t, l, "a").Val, "stale again while the refresh runs")
			s := l.Stats()
			require.EqualValues(t, 2, s.Stale)
			require.EqualValues(t, 1, s.Refreshes, "one refresh")
			require.Zero(t, s.Misses)
			require.Zero(t, s.Hits)

			close(release)
			require.Equal(t, l.Key("a"), resWaitKey(t, fills, "the refresh's fill"))
			require.Equal(t, "a2", resGetRow(t, l, "a").Val)
			s = l.Stats()
			require.EqualValues(t, 1, s.Hits, "refilled")
			require.EqualValues(t, 1, tb.loads.Load())
			require.NotContains(t, fields(t, rdb, l.Key("a")), "f")
		})
	}
}

func TestResilienceInvalidatedNotServedWithoutSWR(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		keeps bool // Invalidate keeps the payload
	}{
		{"no stale serving", Options{}, false},
		{"MaxStale alone", Options{MaxStale: time.Minute}, false},
		{"StaleIfError only", Options{StaleIfError: true, MaxStale: time.Minute}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			fills := resWatch(rdb, "fill")
			tb := newTable()
			tb.put("a", "a1")
			opts := tc.opts
			opts.RedisTimeout = resRelaxed
			l := newLoader(t, rdb, tb, &opts)
			ctx := context.Background()
			require.Equal(t, "a1", resGetRow(t, l, "a").Val)
			resWaitKey(t, fills, "the fill")
			tb.put("a", "a2")
			require.NoError(t, l.Invalidate(ctx, "a"))
			require.Equal(t, tc.keeps, hasField(t, rdb, l.Key("a"), "p"))
			require.Equal(t, "a2", resGetRow(t, l, "a").Val)
			s := l.Stats()
			require.Zero(t, s.Stale)
			require.Zero(t, s.Refreshes)
			require.EqualValues(t, 2, s.Misses)
		})
	}
	t.Run("payload kept by another process", func(t *testing.T) {
		mr, rdb := fakeRedis(t)
		tb := newTable()
		tb.put("a", "a1")
		swr := newLoader(t, rdb, tb, &Options{StaleWhileRevalidate: true, MaxStale: time.Minute, RedisTimeout: resRelaxed})
		plain := newLoader(t, newClient(t, mr.Addr()), tb, &Options{Prefix: swr.s.prefix, RedisTimeout: resRelaxed})
		ctx := context.Background()
		require.Equal(t, "a1", resGetRow(t, swr, "a").Val)
		tb.put("a", "a2")
		require.NoError(t, swr.Invalidate(ctx, "a"))
		require.True(t, hasField(t, rdb, swr.Key("a"), "p"))
		require.Equal(t, "a2", resGetRow(t, plain, "a").Val)
		require.Zero(t, plain.Stats().Stale)
	})
}

// ---------------------------------------------------------------------------
// 7. Stale-if-error

func TestResilienceStaleIfError(t *testing.T) {
	const maxStale = time.Minute
	boom := errors.New("database down")
	sie := Options{StaleIfError: true, MaxStale: maxStale}
	expire := func(by time.Duration) func(t *testing.T, l *Loader[row]) {
		return func(t *testing.T, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - by.Milliseconds() })
		}
	}
	invalidate := func(t *testing.T, l *Loader[row]) {
		require.NoError(t, l.Invalidate(context.Background(), "a"))
	}
	for _, tc := range []struct {
		name    string
		opts    Options
		age     func(t *testing.T, l *Loader[row])
		loadErr error
		stale   bool  // Get answers a1 without error
		wantErr error // otherwise
	}{
		{"expired", sie, expire(5 * time.Second), boom, true, nil},
		{"invalidated", sie, invalidate, boom, true, nil},
		{"not found is not masked", sie, expire(5 * time.Second), ErrNotFound, false, ErrNotFound},
		{"invalidated, not found is not masked", sie, invalidate, ErrNotFound, false, ErrNotFound},
		{"beyond MaxStale", sie, expire(maxStale + 5*time.Second), boom, false, boom},
		{"without StaleIfError", Options{}, expire(5 * time.Second), boom, false, boom},
		{"without StaleIfError, invalidated", Options{}, invalidate, boom, false, boom},
		{"StaleWhileRevalidate alone, load fails", Options{StaleWhileRevalidate: true, MaxStale: maxStale},
			expire(maxStale + 5*time.Second), boom, false, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			tb := newTable()
			tb.hook = func(context.Context, string, int64) error { return tc.loadErr }
			opts := tc.opts
			opts.TTL = time.Minute
			opts.RedisTimeout = resRelaxed
			l := newLoader(t, rdb, tb, &opts)
			ctx := context.Background()
			resSeed(t, l, "a", tb.put("a", "a1"))
			tc.age(t, l)

			v, err := l.Get(ctx, "a")
			s := l.Stats()
			require.EqualValues(t, 1, tb.loads.Load(), "the load was tried")
			if tc.stale {
				require.NoError(t, err)
				require.Equal(t, row{"a1", 1}, v)
				require.EqualValues(t, 1, s.Stale)
				require.EqualValues(t, 1, s.LoadErrors)
				h := fields(t, rdb, l.Key("a"))
				require.Equal(t, mustJSON(t, row{"a1", 1}), h["p"], "the failure is not cached")
				require.NotContains(t, h, entry.LeaseOwner, "the lease is released")
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.Zero(t, s.Stale)
			if errors.Is(tc.wantErr, ErrNotFound) {
				_, err = l.Get(ctx, "a")
				require.ErrorIs(t, err, ErrNotFound, "the row is gone: a negative entry")
				require.EqualValues(t, 1, l.Stats().NegativeHits)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 8. Read bypass

func TestResilienceReadBypass(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := resWatch(rdb, "fill")
	prom, err := NewPrometheus(prometheus.NewRegistry())
	require.NoError(t, err)
	tb := newTable()
	tb.put("a", "a1")
	tb.put("b", "b1")
	tb.put("c", "c1")
	var inflight resInFlight
	started := make(chan struct{}, 64)
	release := make(chan struct{})
	tb.hook = func(_ context.Context, key string, _ int64) error {
		if key == "c" {
			inflight.enter()
			defer inflight.leave()
			started <- struct{}{}
			<-release
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: resRelaxed, Recorder: prom})
	ctx := context.Background()
	gauge := func() float64 { return testutil.ToFloat64(prom.bypass.WithLabelValues("row")) }
	counted := func(ev string) float64 { return testutil.ToFloat64(prom.events.WithLabelValues("row", ev)) }
	require.Equal(t, "a1", resGetRow(t, l, "a").Val)
	resWaitKey(t, fills, "the fill")

	l.SetReadBypass(true)
	l.SetReadBypass(true)
	require.True(t, l.Stats().ReadBypass)
	require.Equal(t, 1.0, gauge())
	require.Equal(t, 1.0, counted("read_bypass_on"), "counted once per change")

	cmds := mr.CommandCount()
	before := l.Stats()
	tb.put("a", "a2")
	require.Equal(t, "a2", resGetRow(t, l, "a").Val, "from the database, not Redis's a1")
	require.Equal(t, "b1", resGetRow(t, l, "b").Val)
	s := l.Stats()
	require.Equal(t, before.Bypassed+2, s.Bypassed)
	require.Equal(t, before.Hits, s.Hits)
	require.Equal(t, before.Loads+2, s.Loads)
	require.Equal(t, cmds, mr.CommandCount(), "no Redis command")
	require.False(t, mr.Exists(l.Key("b")), "nothing filled")

	// Still one load of a key at a time.
	const n = 20
	errs := make(chan error, n)
	get := func() {
		v, err := l.Get(ctx, "c")
		if err == nil && v.Val != "c1" {
			err = fmt.Errorf("got %q", v.Val)
		}
		errs <- err
	}
	go get()
	<-started
	for range n - 1 {
		go get()
	}
	close(release)
	for range n {
		require.NoError(t, <-errs)
	}
	require.EqualValues(t, 1, inflight.max.Load(), "one load of a key at a time")
	require.Equal(t, cmds, mr.CommandCount(), "no Redis command")
	require.False(t, mr.Exists(l.Key("c")))
	require.Equal(t, before.Bypassed+2+n, l.Stats().Bypassed)

	// Writes still reach Redis.
	require.NoError(t, l.Set(ctx, "a", row{"a3", 3}))
	require.Contains(t, fieldsOf(t, resMustGet(t, mr, l.Key("a")))["p"], `"a3"`)
	require.NoError(t, l.Invalidate(ctx, "b"))
	require.Equal(t, "2", fieldsOf(t, resMustGet(t, mr, l.Key("b")))["f"])

	l.SetReadBypass(false)
	l.SetReadBypass(false)
	require.False(t, l.Stats().ReadBypass)
	require.Equal(t, 0.0, gauge())
	require.Equal(t, 1.0, counted("read_bypass_off"), "counted once per change")
	require.Equal(t, 1.0, counted("read_bypass_on"))

	s = l.Stats()
	require.Equal(t, row{"a3", 3}, resGetRow(t, l, "a"), "the value Set while bypassing")
	s2 := l.Stats()
	require.Equal(t, s.Hits+1, s2.Hits)
	require.Equal(t, s.Loads, s2.Loads)
	require.Equal(t, s.Bypassed, s2.Bypassed)
}

// ---------------------------------------------------------------------------
// 9. Read coalescing

func TestResilienceReadCoalescing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, l *Loader[row], tb *table)
		want  string // what the Gets that arrived after the write see
		loads int64
	}{
		{"no write", func(*testing.T, *Loader[row], *table) {}, "a1", 1},
		{"Set", func(t *testing.T, l *Loader[row], tb *table) {
			require.NoError(t, l.Set(context.Background(), "a", tb.put("a", "a2")))
		}, "a2", 1},
		{"Invalidate", func(t *testing.T, l *Loader[row], tb *table) {
			tb.put("a", "a2")
			require.NoError(t, l.Invalidate(context.Background(), "a"))
		}, "a2", 2}, // the later Gets share one load
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			key := "t:row#2:a"
			var armed atomic.Bool
			var hmgets atomic.Int64
			var holdOnce sync.Once
			held := make(chan struct{})
			release := make(chan struct{})
			rdb.AddHook(&resHook{
				before: func(name, k string) error {
					if name == "getrange" && k == key && armed.Load() {
						hmgets.Add(1)
					}
					return nil
				},
				// The first armed HMGET has been answered by Redis; its
				// reply is held until release.
				after: func(name, k string, _ error) {
					if name == "getrange" && k == key && armed.Load() {
						holdOnce.Do(func() { close(held); <-release })
					}
				},
			})
			tb := newTable()
			tb.put("a", "a1")
			// Generous budgets: the held read must not run out of one.
			l := newLoader(t, rdb, tb, &Options{Prefix: "t:", RedisTimeout: time.Minute})
			require.Equal(t, key, l.Key("a"))
			require.Equal(t, "a1", resGetRow(t, l, "a").Val)
			armed.Store(true)

			type res struct {
				v   row
				err error
			}
			first := make(chan res, 1)
			go func() {
				v, err := l.Get(context.Background(), "a")
				first <- res{v, err}
			}()
			<-held // A's read was sent and answered before the write
			tc.write(t, l, tb)

			// Gets that arrive now must wait for a read sent after them.
			later := make(chan res, 2)
			for range 2 {
				ctx := newResArrivalCtx(1)
				go func() {
					v, err := l.Get(ctx, "a")
					later <- res{v, err}
				}()
				<-ctx.arrived // parked on the next read
			}
			close(release)

			r := <-first
			require.NoError(t, r.err)
			require.Equal(t, "a1", r.v.Val, "A's read was answered before the write")
			for range 2 {
				r := <-later
				require.NoError(t, r.err)
				require.Equal(t, tc.want, r.v.Val, "a Get never shares a read sent before it arrived")
			}
			require.EqualValues(t, 2, hmgets.Load(), "the two later Gets shared one read")
			require.Equal(t, tc.loads, tb.loads.Load())
		})
	}
}

// ---------------------------------------------------------------------------
// Regression tests: each reproduced a bug, now fixed.

// A background refresh decided on an entry read before another refresh
// refilled it is granted a lease anyway (acquire.lua mode '2' grants
// whenever no lease is live) and loads again: one redundant load per
// process per refresh round on a hot key.
func TestResilienceRegressionRedundantRefreshAfterFill(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	fillsA := resWatch(rdbA, "fill")
	rdbB := newClient(t, mr.Addr())
	heldB := make(chan struct{})
	releaseB := make(chan struct{})
	var onceB sync.Once
	rdbB.AddHook(&resHook{before: func(name, _ string) error {
		if name == "acquire" {
			onceB.Do(func() { close(heldB); <-releaseB })
		}
		return nil
	}})
	tb := newTable()
	a := newLoader(t, rdbA, tb, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: resRelaxed})
	tbB := newTable()
	tbB.put("a", "a1")
	b := newLoader(t, rdbB, tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: resRelaxed})
	resSeed(t, a, "a", tb.put("a", "a1"))
	resNearExpiry(t, a, "a")

	// B hits and decides to refresh; its lease request is delayed.
	require.Equal(t, "a1", resGetRow(t, b, "a").Val)
	<-heldB
	// Meanwhile A refreshes the entry.
	require.Equal(t, "a1", resGetRow(t, a, "a").Val)
	resWaitKey(t, fillsA, "A's refresh")
	soft, err := strconv.ParseInt(fields(t, rdbA, a.Key("a"))["s"], 10, 64)
	require.NoError(t, err)
	require.Greater(t, soft, a.clock.serverNow()+50_000, "the entry is fresh for a minute")

	close(releaseB)
	require.NoError(t, b.Close()) // waits for B's refresh
	require.Zero(t, tbB.loads.Load(), "B refreshed an entry that had just been refilled")
}

// A Get that finds a soft-expired entry and another caller's lease waits in
// awaitLease, whose first poll takes the expired payload (Usable ignores the
// soft expiry) as "filled": the value is served past its TTL, without any
// stale option and counted as a miss.
func TestResilienceRegressionLeaseWaitServesExpiredValue(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	tb := newTable()
	started := make(chan int64, 4)
	release := make(chan struct{})
	defer close(release)
	tb.hook = func(_ context.Context, _ string, n int64) error {
		started <- n
		<-release
		return nil
	}
	a := newLoader(t, rdbA, tb, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: resRelaxed})
	tbB := newTable()
	tbB.put("a", "a2")
	b := newLoader(t, newClient(t, mr.Addr()), tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true,
		RedisTimeout: resRelaxed})
	resSeed(t, a, "a", tb.put("a", "a1"))
	// The value's TTL has passed (the key lives on a little: a lease
	// request extends it, or MaxStale keeps it for StaleIfError); the last
	// load took 1ms, so B waits on A's lease for at most 20ms.
	editEntry(t, rdbA, a.Key("a"), func(e *entry.Entry) { e.SoftExpiry, e.Delta = a.clock.serverNow()-10_000, 1 })
	tb.put("a", "a2")

	go a.Get(context.Background(), "a") // A takes the lease and loads (held)
	<-started
	v := resGetRow(t, b, "a")
	require.Equal(t, "a2", v.Val, "B served the value whose TTL had passed while A was loading")
}

// EventInvalidationRetried is counted before the key leaves the queue, so a
// Recorder (or a test) woken by it still sees the invalidation pending and
// Gets of the key still bypassing Redis.
func TestResilienceRegressionRetriedCountedWhilePending(t *testing.T) {
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

// Recorder.Count runs under the circuit breaker's lock for breaker events, so
// a Recorder that reads the Loader's state (Stats, BreakerState) deadlocks.
func TestResilienceRegressionRecorderDeadlocksOnBreakerEvent(t *testing.T) {
	mr, rdb := fakeRedis(t)
	var l atomic.Pointer[Loader[row]]
	rec := resRecorderFunc(func(e Event) {
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

// Bypassing flights are keyed key+"\x00bypass" in the same group as normal
// flights, so a Get of the key "x\x00bypass" can take the result of a
// bypassing load of "x": the wrong row.
func TestResilienceRegressionBypassFlightKeyCollision(t *testing.T) {
	_, rdb := fakeRedis(t)
	var failInvalidate atomic.Bool
	odd := "x\x00bypass" // the flight key bypassing loads of x once had
	oddKey := "t:row#2:" + odd
	heldOdd := make(chan struct{})
	releaseOdd := make(chan struct{})
	var once sync.Once
	rdb.AddHook(&resHook{
		before: func(name, _ string) error {
			if (name == "invalidate" || name == "set") && failInvalidate.Load() {
				return errResUnreachable
			}
			return nil
		},
		after: func(name, k string, _ error) {
			if name == "getrange" && k == oddKey {
				once.Do(func() { close(heldOdd); <-releaseOdd })
			}
		},
	})
	tb := newTable()
	tb.put("x", "row x")
	tb.put(odd, "row x-bypass")
	startedX := make(chan struct{}, 1)
	releaseX := make(chan struct{})
	tb.hook = func(_ context.Context, key string, _ int64) error {
		if key == "x" {
			startedX <- struct{}{}
			<-releaseX
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", DisableBreaker: true, RedisTimeout: time.Minute})
	ctx := context.Background()
	// x's invalidation is queued: Gets of x bypass Redis.
	failInvalidate.Store(true)
	_, err := l.WriteThrough(ctx, "x", func(context.Context) (row, error) { r, _ := tb.get("x"); return r, nil })
	require.NoError(t, err)
	require.EqualValues(t, 1, l.Stats().InvalidationsPending)

	oddGot := make(chan row, 1)
	// Done calls 1 and 2: the context.WithTimeout of its read and its
	// cancel; 3: waiting on a flight.
	oddCtx := newResArrivalCtx(3)
	go func() {
		v, _ := l.Get(oddCtx, odd)
		oddGot <- v
	}()
	<-heldOdd // its read was answered: no entry
	go l.Get(ctx, "x")
	<-startedX // x's bypassing load runs under the flight key odd
	close(releaseOdd)
	<-oddCtx.arrived
	close(releaseX)
	require.Equal(t, "row x-bypass", (<-oddGot).Val, "Get(%q) answered with the row of x", odd)
}

// A Redis call cut short by the caller's own deadline is a callerGone: not
// a Redis error, excluded from the breaker. When the callers' deadlines are
// shorter than RedisTimeout, a blackholed Redis never opens the breaker:
// every Get spends its whole deadline waiting on Redis and fails, for as long
// as the outage lasts, and Stats shows no Redis error (DESIGN P4, P6).
func TestResilienceRegressionCallerDeadlineHidesBlackhole(t *testing.T) {
	_, rdb := fakeRedis(t)
	rdb.AddHook(resBlackhole{})
	tb := newTable()
	tb.put("a", "a1")
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", BreakerFailures: 3}) // RedisTimeout 50ms
	var errs []error
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := l.Get(ctx, "a")
		cancel()
		errs = append(errs, err)
	}
	s := l.Stats()
	require.NotZero(t, s.RedisErrors, "10 reads waited on Redis until the caller's deadline; Gets: %v", errs)
	require.Equal(t, BreakerOpen, l.BreakerState())
}

// New accepts settings that are not numbers or that overflow: a NaN
// EarlyRefreshBeta turns early refresh off, +Inf refreshes on every hit, a
// NaN Jitter is taken as none, and BreakerFailures is truncated to uint32
// (1<<32 opens the breaker on the first failure).
func TestResilienceRegressionOptionsAcceptNonFinite(t *testing.T) {
	_, rdb := fakeRedis(t)
	shift := uint(32)
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"NaN EarlyRefreshBeta", Options{EarlyRefreshBeta: math.NaN()}},
		{"+Inf EarlyRefreshBeta", Options{EarlyRefreshBeta: math.Inf(1)}},
		{"NaN Jitter", Options{Jitter: math.NaN()}},
		{"BreakerFailures beyond uint32", Options{BreakerFailures: 1 << shift}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(rdb, "x", nopLoad, &tc.opts)
			if l != nil {
				l.Close()
			}
			require.ErrorContains(t, err, "cache: ")
		})
	}
}

// resMustGet returns key's raw value from mr, which may be closed.
func resMustGet(t *testing.T, mr *miniredis.Miniredis, key string) string {
	t.Helper()
	v, err := mr.DB(0).Get(key)
	require.NoError(t, err)
	return v
}
