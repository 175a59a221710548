package cache

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// The fault-injection suite of DESIGN P4 on the real Redis: the Loader's
// client reaches Redis through a TCP proxy that delays, swallows, resets or
// refuses traffic, or Redis itself is stopped and started again. While the
// database is up, Get must answer every call correctly, without error and
// within RedisTimeout + load time (+ a margin for a loaded machine); the
// breaker must open and close; invalidations that could not be applied must
// be applied once Redis is back, leaving no stale entry; and nothing may
// leak.

const (
	faultRedisTimeout = 50 * time.Millisecond
	faultLoadTime     = 2 * time.Millisecond
	faultCooldown     = 200 * time.Millisecond
	// faultMargin absorbs scheduling on 2 cores under -race; the bound it
	// protects (RedisTimeout + load) would be seconds per call without the
	// budget and the breaker.
	faultMargin = 250 * time.Millisecond
	faultKeys   = 20
)

// faultEnv is one Loader of a table behind a proxy to a Redis.
type faultEnv struct {
	t     *testing.T
	proxy *faultproxy.Proxy
	rdb   *redis.Client
	tb    *table
	l     *Loader[row]
	ev    *events
}

func newFaultEnv(t *testing.T, redisAddr string, opts Options) *faultEnv {
	t.Helper()
	p, err := faultproxy.Start(redisAddr)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	tb := newTable()
	tb.hook = func(context.Context, string, int64) error { time.Sleep(faultLoadTime); return nil }
	for i := range faultKeys {
		tb.put(strconv.Itoa(i), "v0")
	}
	ev := &events{}
	opts.Recorder = ev
	opts.RedisTimeout = faultRedisTimeout
	opts.BreakerCooldown = faultCooldown
	direct := testenv.Redis(t, redisAddr)
	opts.Prefix = testenv.Prefix(t, direct, "cachetest:")
	l, err := New(rdb, "row", tb.load, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return &faultEnv{t: t, proxy: p, rdb: rdb, tb: tb, l: l, ev: ev}
}

// getAll reads every key from conc goroutines, rounds times, and requires
// the database's value, no error, and the time bound for every call.
func (f *faultEnv) getAll(conc, rounds int) (lat []time.Duration) {
	f.t.Helper()
	bound := faultRedisTimeout + faultLoadTime + faultMargin
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, conc*rounds*faultKeys)
	for g := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				for i := range faultKeys {
					k := strconv.Itoa((i + g + r) % faultKeys)
					want, _ := f.tb.get(k)
					start := time.Now()
					v, err := f.l.Get(context.Background(), k)
					d := time.Since(start)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
					switch {
					case err != nil:
						errs <- fmt.Errorf("Get(%s): %w", k, err)
					case v.Ver < want.Ver:
						errs <- fmt.Errorf("Get(%s) = %+v, database has %+v", k, v, want)
					case d > bound:
						errs <- fmt.Errorf("Get(%s) took %v, bound %v", k, d, bound)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		f.t.Error(err)
	}
	return lat
}

// write commits a new value of key through WriteThrough.
func (f *faultEnv) write(key, val string) {
	f.t.Helper()
	_, err := f.l.WriteThrough(context.Background(), key, func(context.Context) (row, error) { return f.tb.put(key, val), nil })
	require.NoError(f.t, err, "WriteThrough never fails once the database committed")
}

// recover drives Gets until the breaker is closed and no invalidation is
// queued (each Get after the cooldown may be the breaker's probe).
func (f *faultEnv) recover() {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for f.l.BreakerState() != BreakerClosed || f.l.Stats().InvalidationsPending > 0 {
		require.True(f.t, time.Now().Before(deadline), "not recovered: %+v", f.l.Stats())
		f.getAll(1, 1)
		select {
		case <-f.ev.on(EventInvalidationRetried):
		case <-time.After(faultCooldown / 4):
		}
	}
}

// requireNoStale requires every key's cached value, if any, to be the
// database's.
func (f *faultEnv) requireNoStale(direct *redis.Client) {
	f.t.Helper()
	ctx := context.Background()
	for i := range faultKeys {
		k := strconv.Itoa(i)
		want, _ := f.tb.get(k)
		h := fields(f.t, direct, f.l.Key(k))
		if p, ok := h["p"]; ok && h["f"] != "2" {
			require.JSONEq(f.t, mustJSON(f.t, want), p, "stale entry for key %s after recovery", k)
		}
		v, err := f.l.Get(ctx, k)
		require.NoError(f.t, err)
		require.Equal(f.t, want, v)
	}
}

func percentiles(lat []time.Duration) string {
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	return fmt.Sprintf("p50 %v p99 %v max %v (n=%d)", at(0.5).Round(time.Microsecond),
		at(0.99).Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), len(lat))
}

func TestFaultInjection(t *testing.T) {
	// Registered first, so it runs after every other cleanup.
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
	direct := testenv.Redis(t, "")
	for _, tc := range []struct {
		name  string
		mode  faultproxy.Mode
		delay time.Duration
	}{
		{"latency above the timeout", faultproxy.Latency, 300 * time.Millisecond},
		{"blackhole", faultproxy.Blackhole, 0},
		{"connection reset", faultproxy.Reset, 0},
		{"refusing connections", faultproxy.Refuse, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFaultEnv(t, testenv.RedisAddr(), Options{})
			opened := f.ev.on(EventBreakerOpen)
			f.getAll(1, 1) // warm: every key cached
			require.EqualValues(t, faultKeys, f.l.Stats().Misses)

			// A few writes cached as they are, so there is something to go stale.
			for i := range 5 {
				f.write(strconv.Itoa(i), "before")
			}
			require.NoError(t, f.proxy.Set(tc.mode, tc.delay))

			lat := f.getAll(8, 3)
			t.Logf("Gets during the fault: %s", percentiles(lat))
			wait(t, opened, "the breaker to open")
			// Open, or already half-open if the cooldown has passed.
			require.NotEqual(t, BreakerClosed, f.l.BreakerState())
			// Writes while Redis is unreachable: committed, queued.
			for i := range 5 {
				f.write(strconv.Itoa(i), "during")
			}
			// ErrRedisUnavailable while the breaker is open; the Redis error
			// itself if this call happens to be the half-open probe.
			require.Error(t, f.l.Invalidate(context.Background(), "7"), "Invalidate reports that Redis was not reached")
			require.NotZero(t, f.l.Stats().InvalidationsPending)
			f.getAll(4, 2) // the queued keys bypass Redis; the others fail open

			require.NoError(t, f.proxy.Set(faultproxy.Pass, 0))
			f.recover()
			f.requireNoStale(direct)
			s := f.l.Stats()
			t.Logf("stats: %+v", s)
			require.NotZero(t, s.BreakerOpened)
			require.NotZero(t, s.BreakerClosed)
			require.NotZero(t, s.RedisSkipped, "the open breaker spared Redis calls")
			require.Equal(t, s.InvalidationsQueued, s.InvalidationsRetried, "every queued invalidation applied")
			require.Zero(t, s.InvalidationsDropped)
			require.Zero(t, s.LoadErrors)
		})
	}
}

// TestFaultRedisRestart stops a Redis of the test's own and starts it again
// on the same port: its data is gone, queued invalidations land on the new
// instance, and Gets never fail.
func TestFaultRedisRestart(t *testing.T) {
	// Registered first, so it runs after every other cleanup.
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unreachable(t, "redis-server binary", err)
	}
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		require.NoError(t, cmd.Start())
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
				return cmd
			}
			require.True(t, time.Now().Before(deadline), "redis-server did not start: %v", err)
			time.Sleep(10 * time.Millisecond) // polling a process we started; nothing to wait on
		}
	}
	srv := start()
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	direct := testenv.Redis(t, addr)
	f := newFaultEnv(t, addr, Options{})
	f.getAll(1, 1)

	require.NoError(t, srv.Process.Kill())
	srv.Wait()
	opened := f.ev.on(EventBreakerOpen)
	lat := f.getAll(8, 3)
	t.Logf("Gets while Redis is down: %s", percentiles(lat))
	wait(t, opened, "the breaker to open")
	for i := range 5 {
		f.write(strconv.Itoa(i), "while down")
	}

	srv = start()
	f.recover()
	f.requireNoStale(direct)
	require.EqualValues(t, 5, f.l.Stats().InvalidationsRetried)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
