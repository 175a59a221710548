package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// The stampede test of DESIGN P2: many processes (Loaders with separate
// clients), each with many goroutines, ask for one cold key at the same
// instant. One load runs in the whole cluster; everyone gets its value.

// stampedeVal is the value of the stampeded key.
type stampedeVal struct {
	Key string `json:"key"`
	Val string `json:"val"`
	Ver int64  `json:"ver"`
}

func (v stampedeVal) CacheVersion() int64 { return v.Ver }

const (
	stampedeProcs      = 8
	stampedeGoroutines = 100
	stampedeLoadTime   = 50 * time.Millisecond
)

// stampedeOutcome is what every goroutine of one stampede got.
type stampedeOutcome struct {
	vals []stampedeVal
	errs []error
	lat  []time.Duration
}

// stampede starts perLoader goroutines on each Loader, parks them all at a
// start gate, releases them at once, and waits for every Get of key.
func stampede(t *testing.T, loaders []*Loader[stampedeVal], perLoader int, key string) stampedeOutcome {
	t.Helper()
	n := len(loaders) * perLoader
	out := stampedeOutcome{vals: make([]stampedeVal, n), errs: make([]error, n), lat: make([]time.Duration, n)}
	// A hang shows as errors, not as a hung test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ready, done sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		l := loaders[i%len(loaders)]
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-gate
			start := time.Now()
			out.vals[i], out.errs[i] = l.Get(ctx, key)
			out.lat[i] = time.Since(start)
		}()
	}
	ready.Wait()
	close(gate)
	done.Wait()
	return out
}

// requireAll fails unless every goroutine got want without error.
func (o stampedeOutcome) requireAll(t *testing.T, want stampedeVal) {
	t.Helper()
	for i := range o.vals {
		require.NoError(t, o.errs[i], "goroutine %d", i)
		require.Equal(t, want, o.vals[i], "goroutine %d", i)
	}
}

func (o stampedeOutcome) logLatency(t *testing.T) {
	t.Helper()
	lat := slices.Clone(o.lat)
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	t.Logf("Get latency over %d goroutines: p50 %v, p99 %v, max %v (load takes %v)",
		len(lat), at(0.50).Round(10*time.Microsecond), at(0.99).Round(10*time.Microsecond),
		lat[len(lat)-1].Round(10*time.Microsecond), stampedeLoadTime)
}

// stampedeOneLoad runs the 8 × 100 stampede on clients made by client and
// requires exactly one load.
func stampedeOneLoad(t *testing.T, client func() redis.UniversalClient, opts Options) {
	var loads atomic.Int64
	want := stampedeVal{Key: "hot", Val: "loaded", Ver: 7}
	first := client()
	opts.Prefix = testenv.Prefix(t, first, "cachetest:")
	var loaders []*Loader[stampedeVal]
	for i := range stampedeProcs {
		rdb := first
		if i > 0 {
			rdb = client()
		}
		l, err := New(rdb, "stampede", func(ctx context.Context, key string) (stampedeVal, error) {
			loads.Add(1)
			time.Sleep(stampedeLoadTime) // the slow query
			return stampedeVal{Key: key, Val: "loaded", Ver: 7}, nil
		}, &opts)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		loaders = append(loaders, l)
	}

	out := stampede(t, loaders, stampedeGoroutines, "hot")
	st := sumStats(loaders)
	out.logLatency(t)
	t.Logf("loads %d, hits %d, misses %d, coalesced %d, lease waits %d, redis errors %d",
		loads.Load(), st.Hits, st.Misses, st.Coalesced, st.LeaseWaits, st.RedisErrors)
	out.requireAll(t, want)
	// P2: one load across the processes. A Get whose Redis budget ran out
	// (the machine too busy to read Redis's reply in time: counted as a
	// Redis error) fails open and may load on its own: each such failure
	// explains at most one more load (its flight's).
	require.LessOrEqual(t, loads.Load(), int64(1+st.RedisErrors+st.BudgetSpent),
		"P2: one load across %d processes × %d goroutines, but for Gets that failed open", stampedeProcs, stampedeGoroutines)

	// The one load filled the entry for everyone: the next Gets are hits.
	for _, l := range loaders {
		v, err := l.Get(context.Background(), "hot")
		require.NoError(t, err)
		require.Equal(t, want, v)
	}
	require.LessOrEqual(t, loads.Load(), int64(1+sumStats(loaders).RedisErrors+sumStats(loaders).BudgetSpent), "the filled entry answers")
}

// stampedeRedisTimeout separates P2 from P4. 800 first reads queued on
// 8 pools of 20 connections (2 cores, -race) can take longer than the
// default RedisTimeout (50ms), and a Get whose Redis calls time out loads on
// its own (fail-open), which is not what this test is about. The subtest
// one_load_default_options runs with the default.
const stampedeRedisTimeout = 5 * time.Second

func TestStampedeRealRedis(t *testing.T) {
	t.Run("one_load", func(t *testing.T) {
		stampedeOneLoad(t, func() redis.UniversalClient { return testenv.Redis(t, "") }, Options{RedisTimeout: stampedeRedisTimeout})
	})

	t.Run("one_load_default_options", func(t *testing.T) {
		// The same stampede with the default Options (RedisTimeout 50ms).
		// The burst of first reads must not push the flights' Redis calls
		// past the budget: when it did (before first reads were coalesced),
		// each process whose calls timed out loaded on its own (fail-open),
		// 3 to 18 loads in all, and could leave behind a lease nobody
		// filled (see TestStampedeOrphanLease).
		stampedeOneLoad(t, func() redis.UniversalClient { return testenv.Redis(t, "") }, Options{})
	})

	t.Run("lease_holder_dies", func(t *testing.T) {
		// The first process takes the lease and hangs in its load; the
		// others wait on its lease, and once it lapses one of them loads
		// and fills for the rest.
		const lease = 300 * time.Millisecond
		first := testenv.Redis(t, "")
		opts := Options{Prefix: testenv.Prefix(t, first, "cachetest:"), LeaseTimeout: lease, LoadTimeout: 5 * time.Second,
			RedisTimeout: stampedeRedisTimeout}
		var loads atomic.Int64
		started := make(chan struct{})
		release := make(chan struct{})
		var releaseOnce sync.Once
		unblock := func() { releaseOnce.Do(func() { close(release) }) }
		t.Cleanup(unblock)

		dead, err := New(first, "stampede", func(ctx context.Context, key string) (stampedeVal, error) {
			loads.Add(1)
			close(started) // a second call would panic: it must not happen
			select {
			case <-release:
			case <-ctx.Done():
				return stampedeVal{}, ctx.Err()
			}
			return stampedeVal{Key: key, Val: "from the dead holder", Ver: 1}, nil
		}, &opts)
		require.NoError(t, err)
		t.Cleanup(func() { dead.Close() })
		var others []*Loader[stampedeVal]
		for range stampedeProcs - 1 {
			l, err := New(testenv.Redis(t, ""), "stampede", func(ctx context.Context, key string) (stampedeVal, error) {
				loads.Add(1)
				time.Sleep(20 * time.Millisecond)
				return stampedeVal{Key: key, Val: "from a survivor", Ver: 1}, nil
			}, &opts)
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			others = append(others, l)
		}

		type reply struct {
			v   stampedeVal
			err error
		}
		deadGot := make(chan reply, 1)
		go func() {
			v, err := dead.Get(context.Background(), "hot")
			deadGot <- reply{v, err}
		}()
		select {
		case <-started: // the holder has the lease and is loading
		case <-time.After(10 * time.Second):
			t.Fatal("the first Get never started its load")
		}

		begin := time.Now()
		out := stampede(t, others, 20, "hot")
		took := time.Since(begin)
		out.logLatency(t)
		st := sumStats(others)
		t.Logf("survivors done after %v (lease %v): loads %d, lease waits %d, coalesced %d",
			took.Round(time.Millisecond), lease, loads.Load(), st.LeaseWaits, st.Coalesced)
		out.requireAll(t, stampedeVal{Key: "hot", Val: "from a survivor", Ver: 1})
		require.EqualValues(t, 2, loads.Load(), "the dead holder's load and one survivor's")
		require.NotZero(t, st.LeaseWaits, "the survivors never waited on the holder's lease")

		// The holder comes back: its Get answers what it loaded, but its
		// fill is refused (its lease was taken over).
		unblock()
		select {
		case r := <-deadGot:
			require.NoError(t, r.err)
			require.Equal(t, "from the dead holder", r.v.Val)
		case <-time.After(10 * time.Second):
			t.Fatal("the revived holder's Get never returned")
		}
		require.EqualValues(t, 1, dead.Stats().StaleSetsPrevented, "the revived holder's fill was refused")
		v, err := dead.Get(context.Background(), "hot")
		require.NoError(t, err)
		require.Equal(t, "from a survivor", v.Val, "the survivor's fill stands")
		require.EqualValues(t, 2, loads.Load())
	})
}

func TestStampedeOneLoadMiniredis(t *testing.T) {
	mr, _ := fakeRedis(t)
	stampedeOneLoad(t, func() redis.UniversalClient { return newClient(t, mr.Addr()) }, Options{RedisTimeout: stampedeRedisTimeout})
}

// lostReply makes the first single run of one script fail on the client,
// through its hook: with ran, after Redis executed it (its reply came too
// late); without, before it was sent (the call never reached Redis).
type lostReply struct {
	name string // the script, as cmdName names it
	ran  bool
	done atomic.Bool
}

func (h *lostReply) hook() *cmdHook {
	first := func(c hookCmd) bool {
		return !c.piped && c.name == h.name && h.done.CompareAndSwap(false, true)
	}
	if h.ran {
		return &cmdHook{after: func(c hookCmd, err error) error {
			if first(c) && err == nil {
				return context.DeadlineExceeded
			}
			return nil
		}}
	}
	return &cmdHook{before: func(c hookCmd) error {
		if first(c) {
			return context.DeadlineExceeded
		}
		return nil
	}}
}

// TestStampedeOrphanLease: a process whose acquire or fill fails on the
// client must not leave a live lease behind that nobody will fill, or every
// other process waits on it for the whole LeaseTimeout.
func TestStampedeOrphanLease(t *testing.T) {
	for _, tc := range []struct {
		name string
		hook *lostReply
	}{
		// The acquire ran (the lease was granted), but its reply was lost:
		// the process loads without filling.
		{"acquire_reply_lost", &lostReply{name: "acquire", ran: true}},
		// The process loaded under its lease, but its fill never reached
		// Redis.
		{"fill_lost", &lostReply{name: "fill", ran: false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdbA := testenv.Redis(t, "")
			rdbA.AddHook(tc.hook.hook())
			// Long enough that waiting it out is plainly wrong, short
			// enough that Close (which waits for B's flight) ends soon.
			opts := Options{Prefix: testenv.Prefix(t, rdbA, "cachetest:"), LeaseTimeout: 2 * time.Second, RedisTimeout: stampedeRedisTimeout}
			var loads atomic.Int64
			load := func(_ context.Context, key string) (stampedeVal, error) {
				loads.Add(1)
				return stampedeVal{Key: key, Val: "v", Ver: 1}, nil
			}
			a, err := New(rdbA, "orphan", load, &opts)
			require.NoError(t, err)
			t.Cleanup(func() { a.Close() })
			b, err := New(testenv.Redis(t, ""), "orphan", load, &opts)
			require.NoError(t, err)
			t.Cleanup(func() { b.Close() })

			v, err := a.Get(context.Background(), "k")
			require.NoError(t, err, "fail-open: A answers from its load")
			require.Equal(t, "v", v.Val)
			require.True(t, tc.hook.done.Load(), "the hook never fired")
			t.Logf("entry after A's Get: %v", fields(t, rdbA, a.Key("k")))

			// B arrives after A's Get has returned: nobody is loading.
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			v, err = b.Get(ctx, "k")
			t.Logf("B's Get took %v: %v %v (lease waits %d)", time.Since(start).Round(time.Millisecond), v, err, b.Stats().LeaseWaits)
			require.False(t, errors.Is(err, context.DeadlineExceeded),
				"B waited on a lease that A left behind after its Get returned")
			require.NoError(t, err)
			require.Equal(t, "v", v.Val)
		})
	}
}
