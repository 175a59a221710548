package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestReadBypass(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := watchCmd(rdb, "fill")
	prom, err := NewPrometheus(prometheus.NewRegistry())
	require.NoError(t, err)
	tb := newTable()
	tb.put("a", "a1")
	tb.put("b", "b1")
	tb.put("c", "c1")
	var inflight loadsInFlight
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
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: relaxedTimeout, Recorder: prom})
	ctx := context.Background()
	gauge := func() float64 { return testutil.ToFloat64(prom.bypass.WithLabelValues("row")) }
	counted := func(ev string) float64 { return testutil.ToFloat64(prom.events.WithLabelValues("row", ev)) }
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	waitKey(t, fills, "the fill")

	l.SetReadBypass(true)
	l.SetReadBypass(true)
	require.True(t, l.Stats().ReadBypass)
	require.Equal(t, 1.0, gauge())
	require.Equal(t, 1.0, counted("read_bypass_on"), "counted once per change")

	cmds := mr.CommandCount()
	before := l.Stats()
	tb.put("a", "a2")
	require.Equal(t, "a2", getRow(t, l, "a").Val, "from the database, not Redis's a1")
	require.Equal(t, "b1", getRow(t, l, "b").Val)
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
	require.Contains(t, fieldsOf(t, rawEntry(t, mr, l.Key("a")))["p"], `"a3"`)
	require.NoError(t, l.Invalidate(ctx, "b"))
	require.Equal(t, "2", fieldsOf(t, rawEntry(t, mr, l.Key("b")))["f"])

	l.SetReadBypass(false)
	l.SetReadBypass(false)
	require.False(t, l.Stats().ReadBypass)
	require.Equal(t, 0.0, gauge())
	require.Equal(t, 1.0, counted("read_bypass_off"), "counted once per change")
	require.Equal(t, 1.0, counted("read_bypass_on"))

	s = l.Stats()
	require.Equal(t, row{"a3", 3}, getRow(t, l, "a"), "the value Set while bypassing")
	s2 := l.Stats()
	require.Equal(t, s.Hits+1, s2.Hits)
	require.Equal(t, s.Loads, s2.Loads)
	require.Equal(t, s.Bypassed, s2.Bypassed)
}

// Bypassing flights are kept apart from the flights of every key: were they
// keyed key+"\x00bypass" in the same group as normal flights, a Get of the
// key "x\x00bypass" could take the result of a bypassing load of "x".
func TestBypassFlightsApartFromOtherKeys(t *testing.T) {
	_, rdb := fakeRedis(t)
	var failInvalidate atomic.Bool
	odd := "x\x00bypass" // the flight key bypassing loads of x once had
	oddKey := "t:row#2:" + odd
	heldOdd := make(chan struct{})
	releaseOdd := make(chan struct{})
	var once sync.Once
	rdb.AddHook(&cmdHook{
		before: func(c hookCmd) error {
			name := c.name
			if (name == "invalidate" || name == "set") && failInvalidate.Load() {
				return errUnreachable
			}
			return nil
		},
		after: func(c hookCmd, _ error) error {
			if c.name == "getrange" && c.key == oddKey {
				once.Do(func() { close(heldOdd); <-releaseOdd })
			}
			return nil
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
	oddCtx := newArrivalCtx(3)
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
