package cache

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/f4df6ac3/cache/internal/testenv"
)

func TestLocalOptionsValidation(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	for _, o := range []LocalOptions{{MaxBytes: -1}, {MaxLag: -time.Millisecond}, {TTL: -time.Second}} {
		_, err := New(rdb, "row", tb.load, &Options{Local: &o})
		require.Error(t, err, "%+v", o)
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}, ContextTimeoutEnabled: true})
	defer ring.Close()
	_, err := New(ring, "row", tb.load, &Options{Local: &LocalOptions{}})
	require.ErrorContains(t, err, "Options.Local")
}

// localPair returns two Loaders of one table and prefix on separate
// clients, as two processes; a has the tier on.
// extra, if given, sets a's other options.
func localPair(t *testing.T, lo LocalOptions, extra ...*Options) (a, b *Loader[row], tb *table) {
	t.Helper()
	tb = newTable()
	ra, rb := testenv.Redis(t, ""), testenv.Redis(t, "")
	prefix := testenv.Prefix(t, ra, "cachetest:")
	oa := Options{}
	if len(extra) > 0 {
		oa = *extra[0]
	}
	oa.Prefix, oa.Local = prefix, &lo
	a = newLoader(t, ra, tb, &oa)
	b = newLoader(t, rb, tb, &Options{Prefix: prefix})
	deadline := time.Now().Add(20 * time.Second)
	for !a.tier.stream.Up() {
		require.True(t, time.Now().Before(deadline), "the tier's stream never came up")
		if a.tier.stream.Wait(context.Background()) != nil {
			time.Sleep(time.Millisecond)
		}
	}
	return a, b, tb
}

// settle waits until the stream applied the invalidations of the Loader's
// own lease and fill: tracking reports them like any change, and a tier
// fill whose read was sent before they were applied is refused.
func settle(t *testing.T, l *Loader[row]) {
	t.Helper()
	require.NoError(t, l.tier.stream.Wait(context.Background()))
}

// TestLocalTier: hits come from the tier once a value was read from Redis;
// another process's Invalidate and this process's writes are seen as the
// staleness bound promises.
func TestLocalTier(t *testing.T) {
	ctx := context.Background()
	for _, lag := range []time.Duration{0, 5 * time.Millisecond} {
		t.Run("MaxLag="+lag.String(), func(t *testing.T) {
			a, b, tb := localPair(t, LocalOptions{MaxLag: lag})
			list, err := b.rdb.ClientList(ctx).Result()
			require.NoError(t, err)
			require.Contains(t, list, "name="+LocalStreamClientName+a.prefix+" ", "the stream's connection is named for cachectl")
			tb.put("k", "v1")
			for i := range 3 { // load, Redis hit (fills the tier), tier hit
				v, err := a.Get(ctx, "k")
				require.NoError(t, err)
				require.Equal(t, "v1", v.Val)
				if i == 0 {
					settle(t, a)
				}
			}
			require.EqualValues(t, 1, a.Stats().Loads)
			if lag == 0 {
				require.EqualValues(t, 1, a.Stats().Hits)
				require.EqualValues(t, 1, a.Stats().LocalHits)
			} else {
				// Bounded: the tier answers while a recent barrier
				// returned, which a busy machine may delay; Redis answers
				// meanwhile.
				deadline := time.Now().Add(20 * time.Second)
				for a.Stats().LocalHits == 0 {
					require.True(t, time.Now().Before(deadline), "the tier never answered")
					v, err := a.Get(ctx, "k")
					require.NoError(t, err)
					require.Equal(t, "v1", v.Val)
				}
			}

			// Another process writes.
			tb.put("k", "v2")
			require.NoError(t, b.Invalidate(ctx, "k"))
			if lag > 0 {
				time.Sleep(lag + time.Millisecond) // the promise covers Gets starting Δ after
			}
			v, err := a.Get(ctx, "k")
			require.NoError(t, err)
			require.Equal(t, "v2", v.Val)

			// This process writes: seen at once, whatever MaxLag.
			for range 2 {
				a.Get(ctx, "k")
			}
			require.NoError(t, a.Set(ctx, "k", tb.put("k", "v3")))
			v, err = a.Get(ctx, "k")
			require.NoError(t, err)
			require.Equal(t, "v3", v.Val)
			tb.put("k", "v4")
			require.NoError(t, a.Invalidate(ctx, "k"))
			v, err = a.Get(ctx, "k")
			require.NoError(t, err)
			require.Equal(t, "v4", v.Val)
		})
	}
}

// TestLocalTierSameProcessWriteWithinLag: with a lag far longer than the
// test, only the synchronous drop can make a write of this process visible
// to its next Get.
func TestLocalTierSameProcessWriteWithinLag(t *testing.T) {
	ctx := context.Background()
	a, _, tb := localPair(t, LocalOptions{MaxLag: time.Hour})
	tb.put("k", "v1")
	a.Get(ctx, "k")
	settle(t, a)
	a.Get(ctx, "k")
	a.Get(ctx, "k")
	require.EqualValues(t, 1, a.Stats().LocalHits)
	_, err := a.WriteThrough(ctx, "k", func(context.Context) (row, error) { return tb.put("k", "v2"), nil })
	require.NoError(t, err)
	v, err := a.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", v.Val)
}

// TestLocalTierCloseStopsEverything: Close ends the tier's stream and its
// store's goroutines.
func TestLocalTierCloseStopsEverything(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after the clients close
	tb := newTable()
	rdb := testenv.Redis(t, "")
	l, err := New(rdb, "row", tb.load, &Options{Prefix: testenv.Prefix(t, rdb, "cachetest:"), Local: &LocalOptions{}})
	require.NoError(t, err)
	tb.put("k", "v")
	l.Get(context.Background(), "k")
	require.NoError(t, l.Close())
}

// TestLocalTierRace: writers commit and invalidate through another
// process's Loader while readers Get through one with the tier on. No Get
// answers older than the last write completed before it began (strict),
// or Δ before it began (bounded).
func TestLocalTierRace(t *testing.T) {
	for _, lag := range []time.Duration{0, 5 * time.Millisecond} {
		t.Run("MaxLag="+lag.String(), func(t *testing.T) {
			a, b, tb := localPair(t, LocalOptions{MaxLag: lag})
			ctx := context.Background()
			const nkeys, writers, readers, reads = 8, 2, 16, 400
			type done struct {
				ver int64
				at  time.Time
			}
			var mu sync.Mutex // protects hist
			hist := make([][]done, nkeys)
			for i := range nkeys {
				tb.put(strconv.Itoa(i), "0")
			}
			// must is the newest version whose invalidation returned
			// before t.
			must := func(i int, t time.Time) int64 {
				mu.Lock()
				defer mu.Unlock()
				var v int64
				for _, d := range hist[i] {
					if d.at.Before(t) {
						v = d.ver
					}
				}
				return v
			}
			stop := make(chan struct{})
			var wwg sync.WaitGroup
			for w := range writers {
				wwg.Add(1)
				go func() {
					defer wwg.Done()
					for n := 0; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						i := w + writers*(n%(nkeys/writers))
						r := tb.put(strconv.Itoa(i), strconv.Itoa(n))
						if err := b.Invalidate(ctx, strconv.Itoa(i)); err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						hist[i] = append(hist[i], done{r.Ver, time.Now()})
						mu.Unlock()
					}
				}()
			}
			var stale, withinLag atomic.Int64
			var rwg sync.WaitGroup
			for range readers {
				rwg.Add(1)
				go func() {
					defer rwg.Done()
					for range reads {
						i := rand.IntN(nkeys)
						began := time.Now()
						want, latest := must(i, began.Add(-lag)), must(i, began)
						v, err := a.Get(ctx, strconv.Itoa(i))
						if err != nil {
							t.Error(err)
							return
						}
						if v.Ver < latest {
							withinLag.Add(1) // older than a write completed less than Δ before: allowed
						}
						if v.Ver < want {
							stale.Add(1)
							t.Errorf("key %d: version %d, a Get begun after %d was invalidated (lag %v)", i, v.Ver, want, lag)
						}
					}
				}()
			}
			rwg.Wait()
			close(stop)
			wwg.Wait()
			s := a.Stats()
			t.Logf("lag %v: %d Gets, local hits %d, Redis hits %d, misses %d; stale beyond the promise %d; older than a write completed within Δ before the Get (allowed) %d; stream %+v",
				lag, readers*reads, s.LocalHits, s.Hits, s.Misses, stale.Load(), withinLag.Load(), a.tier.stream.Stats())
			if lag == 0 {
				require.Zero(t, withinLag.Load(), "strict: no allowance")
			}
			if lag == 0 {
				require.NotZero(t, s.LocalHits, "no Get was answered from the tier: the test proved nothing")
			}
		})
	}
}

// TestLocalTierGetMany: GetMany answers from the tier what it holds, with
// one barrier for all keys, and reads the rest from Redis.
func TestLocalTierGetMany(t *testing.T) {
	ctx := context.Background()
	a, b, tb := localPair(t, LocalOptions{})
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
		tb.put(keys[i], "v1")
	}
	for i := range 3 { // loads, Redis hits (fill the tier), tier hits
		got, err := a.GetMany(ctx, keys)
		require.NoError(t, err)
		require.Len(t, got, len(keys))
		if i == 0 {
			settle(t, a)
		}
	}
	require.EqualValues(t, len(keys), a.Stats().LocalHits)
	ls := a.LocalStats()
	require.True(t, ls.Up)
	require.EqualValues(t, len(keys), ls.Entries)
	require.NotZero(t, ls.Bytes)
	require.NotZero(t, ls.BarrierLatency)
	require.Zero(t, ls.Flushes)
	barriers := a.tier.stream.Stats().Barriers

	tb.put("3", "v2")
	require.NoError(t, b.Invalidate(ctx, "3"))
	got, err := a.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Equal(t, "v2", got["3"].Val)
	require.Equal(t, "v1", got["4"].Val)
	require.EqualValues(t, 2*len(keys)-1, a.Stats().LocalHits)
	require.LessOrEqual(t, a.tier.stream.Stats().Barriers-barriers, uint64(2), "one barrier for the whole GetMany (and one it may have had to wait behind)")
}
