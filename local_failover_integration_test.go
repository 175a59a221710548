package cache

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestLocalTierCluster: the in-process tier on a Redis Cluster of 3
// masters (a stream per master): another process's invalidations of keys
// on every master are seen by the next strict Get; a master SIGKILLed
// under reads and writes flushes the tier, no Get errs or answers older
// than an invalidation that returned before it began, and once the replica
// is promoted the tier follows the new master and answers again.
func TestLocalTierCluster(t *testing.T) {
	lc := testenv.StartCluster(t, testenv.ClusterConfig{NodeTimeout: failoverNodeTimeout})
	ctx := context.Background()
	tb := newTable()
	ra, rb := failoverClient(t, lc.Addrs()), failoverClient(t, lc.Addrs())
	prefix := testenv.Prefix(t, ra, "cachetest:")
	a := newLoader(t, ra, tb, &Options{Prefix: prefix, Local: &LocalOptions{}, RedisTimeout: failoverRedisTimeout})
	b := newLoader(t, rb, tb, &Options{Prefix: prefix, RedisTimeout: failoverRedisTimeout})

	const n = 30
	keys := make([]string, n)
	rkeys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
		rkeys[i] = a.Key(keys[i])
		tb.put(keys[i], "v")
	}
	byMaster := requireEveryMaster(t, lc.Client, rkeys)
	waitTier := func(masters map[string]bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ls := a.LocalStats()
			if ls.Up && ls.Streams == 3 {
				got := map[string]bool{}
				for _, addr := range a.tier.stream.Addrs() {
					got[addr] = true
				}
				if masters == nil || len(got) == len(masters) && func() bool {
					for m := range masters {
						if !got[m] {
							return false
						}
					}
					return true
				}() {
					return
				}
			}
			require.True(t, time.Now().Before(deadline), "the tier never followed the masters: %+v %v", ls, a.tier.stream.Addrs())
			time.Sleep(10 * time.Millisecond)
		}
	}
	masters := map[string]bool{}
	for m := range byMaster {
		masters[m] = true
	}
	waitTier(masters)

	// floor[i] is the version of keys[i] whose invalidation returned.
	floor := make([]int64, n)
	check := func(i int) {
		t.Helper()
		v, err := a.Get(ctx, keys[i])
		require.NoError(t, err, "a Get errs (fail-open)")
		require.GreaterOrEqual(t, v.Ver, floor[i], "%s: older than an invalidation that returned before the Get began", keys[i])
	}
	write := func(i int) {
		t.Helper()
		r := tb.put(keys[i], "v")
		if b.Invalidate(ctx, keys[i]) == nil {
			floor[i] = r.Ver
		}
	}

	// Healthy: local hits on every master's keys, invalidations seen.
	for range 3 {
		for i := range keys {
			check(i)
		}
		require.NoError(t, a.tier.stream.Wait(ctx)) // the fills' own lease/fill messages applied
	}
	hits := a.Stats().LocalHits
	require.NotZero(t, hits, "no Get was answered from the tier")
	for i := range keys {
		write(i)
		check(i)
		r, _ := tb.get(keys[i])
		require.Equal(t, floor[i], r.Ver)
	}

	// A master dies under reads and writes.
	var victim string
	for m := range byMaster {
		victim = m
		break
	}
	replica, err := lc.ReplicaOf(ctx, victim)
	require.NoError(t, err)
	flushes := a.LocalStats().Flushes
	lc.Kill(t, victim)
	promoted := make(chan struct{})
	go func() {
		defer close(promoted)
		lc.WaitMaster(t, replica, 30*time.Second)
	}()
	for round := 0; ; round++ {
		for i := range keys {
			write(i)
			check(i)
			check((i + 7) % n)
		}
		select {
		case <-promoted:
		default:
			continue
		}
		break
	}
	delete(masters, victim)
	masters[replica] = true
	waitTier(masters)
	require.Greater(t, a.LocalStats().Flushes, flushes, "the dead master's stream did not flush the tier")

	// Answering from the tier again, still never older than an
	// invalidation that returned.
	hits = a.Stats().LocalHits
	deadline := time.Now().Add(30 * time.Second)
	for a.Stats().LocalHits == hits {
		require.True(t, time.Now().Before(deadline), "the tier never answered after the failover: %+v", a.LocalStats())
		for i := range keys {
			check(i)
		}
	}
	for i := range keys {
		write(i)
		check(i)
	}
	t.Logf("tier after the failover: %+v", a.LocalStats())
}

// TestLocalTierSentinel: the tier on a Sentinel-managed Redis (a failover
// client): the master SIGKILLed under reads and writes flushes the tier,
// no Get errs or answers older than an invalidation that returned before
// it began, and once the sentinels promoted the replica the stream
// reconnects to it (the failover client's dialer finds it) and the tier
// answers again.
func TestLocalTierSentinel(t *testing.T) {
	ls := testenv.Sentinel(t)
	ctx := context.Background()
	tb := newTable()
	ra, rb := ls.Client(t), ls.Client(t)
	prefix := testenv.Prefix(t, ra, "cachetest:")
	a := newLoader(t, ra, tb, &Options{Prefix: prefix, Local: &LocalOptions{}, RedisTimeout: sentinelRedisTimeout})
	b := newLoader(t, rb, tb, &Options{Prefix: prefix, RedisTimeout: sentinelRedisTimeout})
	const n = 20
	keys := make([]string, n)
	floor := make([]int64, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
		tb.put(keys[i], "v")
	}
	check := func(i int) {
		t.Helper()
		v, err := a.Get(ctx, keys[i])
		require.NoError(t, err, "a Get errs (fail-open)")
		require.GreaterOrEqual(t, v.Ver, floor[i], "%s: older than an invalidation that returned before the Get began", keys[i])
	}
	write := func(i int) {
		t.Helper()
		r := tb.put(keys[i], "v")
		if b.Invalidate(ctx, keys[i]) == nil {
			floor[i] = r.Ver
		}
	}
	answersLocally := func() {
		t.Helper()
		hits := a.Stats().LocalHits
		deadline := time.Now().Add(30 * time.Second)
		for a.Stats().LocalHits == hits {
			require.True(t, time.Now().Before(deadline), "the tier never answered: %+v", a.LocalStats())
			for i := range keys {
				check(i)
			}
			a.tier.stream.Wait(ctx) // the fills' own messages applied
		}
	}
	answersLocally()
	for i := range keys {
		write(i)
		check(i)
	}

	flushes := a.LocalStats().Flushes
	old := ls.KillMaster(t)
	promoted := make(chan struct{})
	go func() {
		defer close(promoted)
		ls.WaitPromoted(t, old, 30*time.Second)
	}()
	for done := false; !done; {
		for i := range keys {
			write(i)
			check(i)
			check((i + 7) % n)
		}
		select {
		case <-promoted:
			done = true
		default:
		}
	}
	answersLocally()
	require.Greater(t, a.LocalStats().Flushes, flushes, "the dead master's stream did not flush the tier")
	for i := range keys {
		write(i)
		check(i)
	}
	t.Logf("tier after the failover: %+v", a.LocalStats())
}
