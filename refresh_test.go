package cache

import (
	"context"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
)

func TestRefreshDue(t *testing.T) {
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

func TestEarlyRefresh(t *testing.T) {
	mr, rdb := fakeRedis(t)
	fills := watchCmd(rdb, "fill")
	rdbB := newClient(t, mr.Addr())
	acquiresB := watchCmd(rdbB, "acquire")

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
	opts := Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout, Recorder: ev}
	l := newLoader(t, rdb, tb, &opts)
	seedRow(t, l, "a", tb.put("a", "a1"))
	key := l.Key("a")

	soft := nearExpiry(t, l, "a")
	tb.put("a", "a2") // the table changed; the entry still holds a1

	// The hit answers at once with the current value, while the refresh's
	// load is held.
	require.Equal(t, "a1", getRow(t, l, "a").Val)
	wait(t, refreshed, "the refresh to start")
	require.EqualValues(t, 1, <-started)
	s := l.Stats()
	require.EqualValues(t, 1, s.Hits)
	require.EqualValues(t, 1, s.Refreshes)

	// Concurrent hits start no other refresh in this process.
	for _, v := range concurrentGets(t, l, "a", 20) {
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
	b := newLoader(t, rdbB, tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout,
		Recorder: evB})
	require.Equal(t, "a1", getRow(t, b, "a").Val)
	wait(t, refreshedB, "B's refresh to start")
	waitKey(t, acquiresB, "B's lease request")
	require.NoError(t, b.Close()) // waits for B's refresh to end
	require.Zero(t, tbB.loads.Load(), "B's refresh found the lease held")

	// The refresh fills the new value with a new soft expiry.
	close(release)
	require.Equal(t, key, waitKey(t, fills, "the refresh's fill"))
	h := fields(t, rdb, key)
	require.Equal(t, mustJSON(t, row{"a2", 2}), h["p"])
	newSoft, err := strconv.ParseInt(h["s"], 10, 64)
	require.NoError(t, err)
	require.Greater(t, newSoft, soft)
	require.Greater(t, newSoft, l.clock.serverNow()+50_000, "about TTL ahead")
	require.NotEqual(t, "10000000", h["d"], "the real load time is stored")
	require.NotContains(t, h, entry.LeaseOwner)

	require.Equal(t, "a2", getRow(t, l, "a").Val)
	require.EqualValues(t, 1, tb.loads.Load(), "one refresh load")
	s = l.Stats()
	require.EqualValues(t, 22, s.Hits)
	require.EqualValues(t, 1, s.Refreshes)
	require.Zero(t, s.Misses)
}

func TestEarlyRefreshDisabled(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{DisableEarlyRefresh: true, RedisTimeout: relaxedTimeout})
	seedRow(t, l, "a", tb.put("a", "a1"))
	nearExpiry(t, l, "a")
	for _, v := range concurrentGets(t, l, "a", 10) {
		require.Equal(t, "a1", v.Val)
	}
	s := l.Stats()
	require.Zero(t, s.Refreshes)
	require.EqualValues(t, 10, s.Hits)
	require.Zero(t, tb.loads.Load())
}

// A background refresh decided on an entry read before another process
// refilled it does not load again: acquire.lua's refresh mode must not
// grant a lease merely because none is live, or a hot key costs one
// redundant load per process per refresh round.
func TestNoRefreshOfEntryRefilledMeanwhile(t *testing.T) {
	mr, rdbA := fakeRedis(t)
	fillsA := watchCmd(rdbA, "fill")
	rdbB := newClient(t, mr.Addr())
	heldB := make(chan struct{})
	releaseB := make(chan struct{})
	var onceB sync.Once
	rdbB.AddHook(&cmdHook{before: func(c hookCmd) error {
		name := c.name
		if name == "acquire" {
			onceB.Do(func() { close(heldB); <-releaseB })
		}
		return nil
	}})
	tb := newTable()
	a := newLoader(t, rdbA, tb, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout})
	tbB := newTable()
	tbB.put("a", "a1")
	b := newLoader(t, rdbB, tbB, &Options{Prefix: "t:", TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout})
	seedRow(t, a, "a", tb.put("a", "a1"))
	nearExpiry(t, a, "a")

	// B hits and decides to refresh; its lease request is delayed.
	require.Equal(t, "a1", getRow(t, b, "a").Val)
	<-heldB
	// Meanwhile A refreshes the entry.
	require.Equal(t, "a1", getRow(t, a, "a").Val)
	waitKey(t, fillsA, "A's refresh")
	soft, err := strconv.ParseInt(fields(t, rdbA, a.Key("a"))["s"], 10, 64)
	require.NoError(t, err)
	require.Greater(t, soft, a.clock.serverNow()+50_000, "the entry is fresh for a minute")

	close(releaseB)
	require.NoError(t, b.Close()) // waits for B's refresh
	require.Zero(t, tbB.loads.Load(), "B refreshed an entry that had just been refilled")
}
