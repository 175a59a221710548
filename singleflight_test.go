package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// blockingTable returns a table whose loads stop after reading the row
// until release is closed, and a channel that receives as each load starts.
func blockingTable() (tb *table, started chan int64, release chan struct{}) {
	tb = newTable()
	started = make(chan int64, 16)
	release = make(chan struct{})
	tb.hook = func(_ context.Context, _ string, n int64) error {
		started <- n
		<-release
		return nil
	}
	return tb, started, release
}

func TestSingleflightOneLoadPerKey(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb, started, release := blockingTable()
	tb.put("a", "one")
	l := newLoader(t, rdb, tb, nil)

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	leader := make(chan struct{})
	go func() {
		defer close(leader)
		_, err := l.Get(context.Background(), "a")
		errs <- err
	}()
	<-started // the flight is loading; Gets from now on join it or hit
	for range n - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := l.Get(context.Background(), "a")
			if err == nil && v.Val != "one" {
				err = errors.New("wrong value " + v.Val)
			}
			errs <- err
		}()
	}
	close(release)
	wg.Wait()
	<-leader
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, tb.loads.Load(), "one load for every concurrent Get")
	// Each Get joined the flight, came after the fill (a hit), or read the
	// entry before the fill and asked for the lease after it (answered
	// from the filled entry: a miss without a load). Each is counted once.
	s := l.Stats()
	require.EqualValues(t, n, s.Hits+s.Misses)
}

func TestSingleflightWaiterLeavesOnItsContext(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb, started, release := blockingTable()
	tb.put("a", "one")
	l := newLoader(t, rdb, tb, nil)

	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := l.Get(leaderCtx, "a")
		leaderErr <- err
	}()
	<-started

	waiterCtx, cancelWaiter := context.WithCancel(context.Background())
	waiterErr := make(chan error, 1)
	go func() {
		_, err := l.Get(waiterCtx, "a")
		waiterErr <- err
	}()
	other := make(chan row, 1)
	go func() {
		v, err := l.Get(context.Background(), "a")
		require.NoError(t, err)
		other <- v
	}()

	// Both the leader and a waiter leave while the load is blocked.
	cancelLeader()
	cancelWaiter()
	require.ErrorIs(t, <-leaderErr, context.Canceled)
	require.ErrorIs(t, <-waiterErr, context.Canceled)

	// The load goes on for the others and is not cancelled by the leader.
	close(release)
	require.Equal(t, "one", (<-other).Val)
	require.EqualValues(t, 1, tb.loads.Load())
	require.EqualValues(t, 0, l.Stats().LoadErrors)
}

func TestLoadRunsDetachedButBounded(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.hook = func(ctx context.Context, _ string, _ int64) error {
		<-ctx.Done() // a load that never finishes on its own
		return ctx.Err()
	}
	l := newLoader(t, rdb, tb, &Options{LoadTimeout: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Even with the caller's ctx already done, the load's own ctx is alive
	// until LoadTimeout, and the caller leaves at once.
	_, err := l.Get(ctx, "a")
	require.ErrorIs(t, err, context.Canceled)
	_, err = l.Get(context.Background(), "a")
	require.ErrorIs(t, err, context.DeadlineExceeded, "LoadTimeout ends the load")
}

func TestLoadPanicBecomesError(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb, started, release := blockingTable()
	tb.put("a", "one")
	panicky := tb.hook
	tb.hook = func(ctx context.Context, k string, n int64) error {
		if n == 1 {
			_ = panicky(ctx, k, n)
			panic("boom")
		}
		return nil
	}
	l := newLoader(t, rdb, tb, nil)

	errs := make(chan error, 3)
	go func() { _, err := l.Get(context.Background(), "a"); errs <- err }()
	<-started
	for range 2 {
		go func() { _, err := l.Get(context.Background(), "a"); errs <- err }()
	}
	close(release)
	for range 3 {
		err := <-errs
		if err == nil {
			continue // arrived after the flight ended and loaded again
		}
		var pe *PanicError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, "boom", pe.Value)
		require.Contains(t, string(pe.Stack), "singleflight_test.go", "the panic's stack is kept")
	}
	v, err := l.Get(context.Background(), "a")
	require.NoError(t, err, "the key is usable after a panic")
	require.Equal(t, "one", v.Val)
}

// TestNoStaleReadAfterInvalidate is DESIGN P3b inside one process: a Get
// that starts after Invalidate returned must not take the result of a flight
// that loaded before it, and that flight's fill must be rejected (P3).
func TestNoStaleReadAfterInvalidate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		writeNew func(ctx context.Context, l *Loader[row], r row) error
	}{
		{"Invalidate", func(ctx context.Context, l *Loader[row], _ row) error { return l.Invalidate(ctx, "a") }},
		{"Set", func(ctx context.Context, l *Loader[row], r row) error { return l.Set(ctx, "a", r) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			tb := newTable()
			tb.put("a", "old")
			started := make(chan int64, 4)
			release := make(chan struct{})
			tb.hook = func(_ context.Context, _ string, n int64) error {
				if n == 1 { // only the first load is slow
					started <- n
					<-release
				}
				return nil
			}
			l := newLoader(t, rdb, tb, nil)
			ctx := context.Background()

			slow := make(chan row, 1)
			go func() {
				v, err := l.Get(ctx, "a")
				require.NoError(t, err)
				slow <- v
			}()
			<-started // the flight has read "old" and is stuck before its fill

			r := tb.put("a", "new") // the write commits ...
			require.NoError(t, tc.writeNew(ctx, l, r))

			// ... and a Get that starts now must not join the old flight.
			v, err := l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, "new", v.Val)

			close(release)
			require.Equal(t, "old", (<-slow).Val, "the slow Get began before the write")
			require.NotZero(t, l.Stats().StaleSetsPrevented, "the old fill is rejected")
			v, err = l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, "new", v.Val, "Redis holds the new value, not the old fill")
		})
	}
}

// A flight that finished with an error (or "not found") does not answer
// Gets that arrive after its result was published, even while it is still
// releasing its lease.

// slowRelease makes every lease release slow and fail on the client, as on
// a loaded machine: the release then runs after the flight's result is
// published, and the flight stays joinable meanwhile.
func slowRelease() *cmdHook {
	return &cmdHook{before: func(c hookCmd) error {
		if c.name == "release" && !c.piped {
			time.Sleep(200 * time.Millisecond)
			return context.DeadlineExceeded
		}
		return nil
	}}
}

// A Get that starts after the database came back is answered with the error
// of a load that failed before it started, without loading.
func TestFinishedFlightErrorNotShared(t *testing.T) {
	_, rdb := fakeRedis(t)
	rdb.AddHook(slowRelease())
	tb := newTable()
	tb.put("k", "v1")
	var down atomic.Bool
	down.Store(true)
	tb.hook = func(context.Context, string, int64) error {
		if down.Load() {
			return errors.New("db down")
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{DisableBreaker: true, LeaseTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	_, err := l.Get(ctx, "k")
	require.ErrorContains(t, err, "db down")

	down.Store(false) // the database is back
	v, err := l.Get(ctx, "k")
	t.Logf("Get after recovery: %+v, %v; loads %d", v, err, tb.loads.Load())
	require.NoError(t, err, "a Get that began after the failure got the failed load's error")
}

// Without any slowness: a Get issued right after the previous one returned
// does not take the result of the finished flight, even while it is still
// registered (between close(f.done) and run's deferred delete):
// DisableNegativeCache promises a load per Get. Run it under -race.
func TestFinishedFlightNotJoinedWithoutNegativeCache(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{DisableNegativeCache: true})
	for i := range 500 {
		_, err := l.Get(context.Background(), "nope")
		require.ErrorIs(t, err, ErrNotFound)
		if got := tb.loads.Load(); got != int64(i+1) {
			t.Fatalf("Get %d: %d loads, want one per Get", i+1, got)
		}
	}
}
