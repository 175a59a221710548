package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// Loaders with separate clients stand for separate processes.

func TestLeaseMakesOtherProcessesWait(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	tb, started, release := blockingTable()
	tb.put("a", "one")
	a := newLoader(t, rdbA, tb, nil)
	rdbB := newClient(t, mr.Addr())
	tbB := newTable() // process B's own view of the database
	tbB.put("a", "one")
	b := newLoader(t, rdbB, tbB, &Options{Prefix: a.s.prefix})

	got := make(chan row, 2)
	go func() { v, _ := a.Get(context.Background(), "a"); got <- v }()
	<-started // A holds the lease and is loading

	ev := &events{}
	b.s.recorder = ev
	waiting := ev.on(EventLeaseWait)
	go func() { v, _ := b.Get(context.Background(), "a"); got <- v }()
	wait(t, waiting, "B to wait on A's lease")
	close(release)
	require.Equal(t, "one", (<-got).Val)
	require.Equal(t, "one", (<-got).Val)
	require.EqualValues(t, 1, tb.loads.Load())
	require.EqualValues(t, 0, tbB.loads.Load(), "B took A's fill instead of loading")
	require.EqualValues(t, 1, b.Stats().LeaseWaits)
}

func TestLapsedLeaseIsTakenOver(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	// A's load hangs past its lease: the holder "died".
	tbA, started, release := blockingTable()
	tbA.put("a", "one")
	defer close(release)
	lease := 150 * time.Millisecond
	a := newLoader(t, rdbA, tbA, &Options{LeaseTimeout: lease})
	tbB := newTable()
	tbB.put("a", "one")
	b := newLoader(t, newClient(t, mr.Addr()), tbB, &Options{Prefix: a.s.prefix, LeaseTimeout: lease})

	go a.Get(context.Background(), "a")
	<-started
	v, err := b.Get(context.Background(), "a")
	require.NoError(t, err)
	require.Equal(t, "one", v.Val)
	require.EqualValues(t, 1, tbB.loads.Load(), "B loaded once A's lease lapsed")
	// B filled under its own lease: the entry is usable for everyone.
	h := fields(t, rdbA, a.Key("a"))
	require.Equal(t, `{"val":"one","ver":1}`, h["p"])
}

func TestLeaseWaitBoundedByLastLoadTime(t *testing.T) {
	// With the last load's duration known, a waiter gives up after a few
	// times that and loads without filling, rather than wait out the lease.
	mr, rdbA := fakeRedis(t)
	tbA := newTable()
	tbA.put("a", "one")
	a := newLoader(t, rdbA, tbA, &Options{LeaseTimeout: time.Hour, LoadTimeout: time.Hour})
	ctx := context.Background()
	_, err := a.Get(ctx, "a") // fill with a known (tiny) load duration
	require.NoError(t, err)
	require.NoError(t, a.Invalidate(ctx, "a"))

	// A takes the lease and hangs.
	started := make(chan int64, 1)
	release := make(chan struct{})
	defer close(release)
	tbA.hook = func(_ context.Context, _ string, n int64) error { started <- n; <-release; return nil }
	go a.Get(ctx, "a")
	<-started

	tbB := newTable()
	tbB.put("a", "two")
	b := newLoader(t, newClient(t, mr.Addr()), tbB, &Options{Prefix: a.s.prefix, LeaseTimeout: time.Hour, LoadTimeout: time.Hour})
	v, err := b.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "two", v.Val)
	require.EqualValues(t, 1, tbB.loads.Load())
	require.NotEqual(t, `{"val":"two","ver":1}`, fields(t, rdbA, a.Key("a"))["p"],
		"a load without the lease does not fill")
}

func TestStampedeAcrossProcessesMiniredis(t *testing.T) {
	mr, _ := fakeRedis(t)
	tb := newTable()
	tb.put("hot", "v")
	tb.hook = func(context.Context, string, int64) error { time.Sleep(20 * time.Millisecond); return nil }
	prefix := "stampede:"
	// This test is about leases, not timeouts: 400 first reads queued on
	// miniredis under -race can take longer than the default RedisTimeout,
	// and a Get whose Redis calls time out loads on its own (fail-open).
	var loaders []*Loader[row]
	for range 8 {
		loaders = append(loaders, newLoader(t, newClient(t, mr.Addr()), tb, &Options{Prefix: prefix, RedisTimeout: 5 * time.Second}))
	}
	gate := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for _, l := range loaders {
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				v, err := l.Get(context.Background(), "hot")
				if err == nil && v.Val != "v" {
					t.Errorf("got %q", v.Val)
				}
				errs <- err
			}()
		}
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, tb.loads.Load(), "one load across 8 processes")
}

// A lease whose fill could not reach Redis — Redis went away during the
// load, so the fill failed before and after the Get was answered — is
// filled (or released) once Redis answers again, not left for other
// processes to wait out until it lapses.
func TestLeaseLeftByAFailedFillIsFilledWhenRedisAnswers(t *testing.T) {
	direct, p, rdb := proxiedRedis(t)
	tb := newTable()
	tb.put("a", "one")
	var cut atomic.Bool
	tb.hook = func(context.Context, string, int64) error {
		if !cut.Swap(true) { // the first load: Redis goes away meanwhile
			return p.Set(faultproxy.Blackhole, 0)
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: 50 * time.Millisecond, LeaseTimeout: time.Minute})
	ctx := context.Background()
	v, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "one", v.Val)
	e, err := entry.Decode(direct.Get(ctx, l.Key("a")).Val(), 1<<20)
	require.NoError(t, err)
	require.NotEmpty(t, e.LeaseOwner, "the fill did not reach Redis: the lease is still there")

	require.NoError(t, p.Set(faultproxy.Pass, 0))
	require.Eventually(t, func() bool {
		e, err := entry.Decode(direct.Get(ctx, l.Key("a")).Val(), 1<<20)
		return err == nil && e.LeaseOwner == "" && e.Usable()
	}, 10*time.Second, 5*time.Millisecond, "the fill was sent again once Redis answered")
	other := newLoader(t, newClient(t, testenv.RedisAddr()), tb, &Options{Prefix: l.s.prefix})
	v, err = other.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "one", v.Val)
	require.EqualValues(t, 1, other.Stats().Hits)
	require.EqualValues(t, 1, tb.loads.Load())
}

// A lease request that reaches Redis after its caller gave up on it — it
// sat in a socket while the Get timed out, loaded and tried a fill that
// found no lease — grants nothing: no lease is left for other processes
// to wait out until it lapses.
func TestLeaseRequestRunAfterItsCallerGaveUpGrantsNothing(t *testing.T) {
	direct, p, rdb := proxiedRedis(t)
	tb := newTable()
	tb.put("a", "one")
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: 50 * time.Millisecond, LeaseTimeout: time.Minute})
	ctx := context.Background()
	p.DelayNextRequest("EVALSHA", 300*time.Millisecond) // the acquire
	v, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "one", v.Val)

	// The acquire has run by the time a read queued behind it on its
	// connection is answered; by then the Get's tentative fill has been
	// sent too (after the acquire's deadline).
	time.Sleep(400 * time.Millisecond)
	raw, err := direct.Get(ctx, l.Key("a")).Result()
	if err == nil {
		e, err := entry.Decode(raw, 1<<20)
		require.NoError(t, err)
		require.Empty(t, e.LeaseOwner, "a lease was left: %+v", e)
	} else {
		require.ErrorIs(t, err, redis.Nil)
	}
	// Another process is not held up by it.
	other := newLoader(t, newClient(t, testenv.RedisAddr()), tb, &Options{Prefix: l.s.prefix, LeaseTimeout: time.Minute})
	v, err = other.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "one", v.Val)
	require.Zero(t, other.Stats().LeaseWaits)
}

// A Get that finds a soft-expired entry and another caller's lease waits in
// awaitLease for the fill: the expired payload still in the entry (Usable
// ignores the soft expiry) is not taken as "filled", so no value is served
// past its TTL without a stale option.
func TestLeaseWaitDoesNotServeExpiredValue(t *testing.T) {
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
	a := newLoader(t, rdbA, tb, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout})
	tbB := newTable()
	tbB.put("a", "a2")
	b := newLoader(t, newClient(t, mr.Addr()), tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true,
		RedisTimeout: relaxedTimeout})
	seedRow(t, a, "a", tb.put("a", "a1"))
	// The value's TTL has passed (the key lives on a little: a lease
	// request extends it, or MaxStale keeps it for StaleIfError); the last
	// load took 1ms, so B waits on A's lease for at most 20ms.
	editEntry(t, rdbA, a.Key("a"), func(e *entry.Entry) { e.SoftExpiry, e.Delta = a.clock.serverNow()-10_000, 1 })
	tb.put("a", "a2")

	go a.Get(context.Background(), "a") // A takes the lease and loads (held)
	<-started
	v := getRow(t, b, "a")
	require.Equal(t, "a2", v.Val, "B served the value whose TTL had passed while A was loading")
}
