package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestClusterBreakerPerMaster: on a Redis Cluster each master has a
// breaker of its own. A master that crashed (and, here, is not replaced:
// its replica waits out a long node timeout) opens only its breaker: the
// keys of the other masters keep answering from Redis, and those of the
// dead one from the database, without errors. With one breaker for the
// whole Loader, the failures on the dead master's keys would open it and
// send every key to the database.
func TestClusterBreakerPerMaster(t *testing.T) {
	lc := testenv.StartCluster(t, testenv.ClusterConfig{NodeTimeout: time.Minute})
	ctx := context.Background()
	tb := newTable()
	const keys = 60
	for i := range keys {
		tb.put(fmt.Sprint("k", i), fmt.Sprint("v", i))
	}
	ev := &events{}
	opened := ev.on(EventBreakerOpen)
	l := newLoader(t, lc.Client, tb, &Options{TTL: time.Hour, RedisTimeout: 500 * time.Millisecond, Recorder: ev})
	require.NotNil(t, l.cluster.nodes, "a cluster client gets a breaker per master")

	// Fill every key, and find each key's master.
	master := map[string][]string{}
	for i := range keys {
		k := fmt.Sprint("k", i)
		_, err := l.Get(ctx, k)
		require.NoError(t, err)
		node, err := lc.Client.MasterForKey(ctx, l.Key(k))
		require.NoError(t, err)
		addr := node.Options().Addr
		master[addr] = append(master[addr], k)
	}
	require.Len(t, master, 3, "the keys are spread over the 3 masters")
	var dead string
	for addr := range master {
		dead = addr
		break
	}
	var deadKeys, liveKeys []string
	for addr, ks := range master {
		if addr == dead {
			deadKeys = append(deadKeys, ks...)
		} else {
			liveKeys = append(liveKeys, ks...)
		}
	}
	lc.Kill(t, dead)

	// Rounds of Gets, the dead master's keys first: their failures come in
	// a row, as they would open a breaker shared by all keys.
	var deadHits, liveHits, liveGets int
	for round := range 10 {
		for _, k := range deadKeys {
			v, hit, err := l.get(ctx, k)
			require.NoError(t, err, "round %d, key %s (dead master)", round, k)
			want, _ := tb.get(k)
			require.Equal(t, want, v)
			if hit {
				deadHits++
			}
		}
		for _, k := range liveKeys {
			v, hit, err := l.get(ctx, k)
			require.NoError(t, err, "round %d, key %s", round, k)
			want, _ := tb.get(k)
			require.Equal(t, want, v)
			liveGets++
			if hit {
				liveHits++
			}
		}
	}
	wait(t, opened, "the dead master's breaker to open")
	t.Logf("dead master %s: %d keys, %d hits; live masters: %d keys, %d of %d Gets hits; stats %+v",
		dead, len(deadKeys), deadHits, len(liveKeys), liveHits, liveGets, l.Stats())
	require.Zero(t, deadHits)
	require.Equal(t, liveGets, liveHits, "the live masters' keys all answered from Redis")
	require.NotEqual(t, BreakerClosed, l.BreakerState(), "open (or half-open, probing) while any master's breaker is")

	// GetMany too: one pipeline per master, each through its breaker (a
	// pipeline over all masters, failing every time, would open a breaker
	// of its own after a few calls).
	all := append(append([]string(nil), deadKeys...), liveKeys...)
	for round := range 8 {
		hits := l.Stats().Hits
		got, err := l.GetMany(ctx, all)
		require.NoError(t, err)
		require.Len(t, got, keys)
		require.EqualValues(t, len(liveKeys), l.Stats().Hits-hits, "GetMany %d: the live masters' keys from Redis", round)
	}
	// The Loader's state went to open (again after each probe of the
	// dead master, which the prober sends once the cooldown passes) and
	// never closed: the live masters' breakers never opened it.
	require.NotZero(t, l.Stats().BreakerOpened)
	require.Zero(t, l.Stats().BreakerClosed, "the dead master's breaker never closed")
}

// TestClusterUnreachableAtStart: a cluster client that has never reached
// the cluster must load its slot map before it can name a key's master.
// With the cluster unreachable (every byte held), that lookup is bounded
// by the Get's Redis budget like every call: Get answers from the load at
// once instead of waiting out go-redis's dial and read timeouts.
func TestClusterUnreachableAtStart(t *testing.T) {
	mr := miniredis.RunT(t)
	p, err := faultproxy.Start(mr.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	require.NoError(t, p.Set(faultproxy.Blackhole, 0))
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{p.Addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cc.Close() })

	tb := newTable()
	tb.put("a", "one")
	const budget = 100 * time.Millisecond
	l := newLoader(t, cc, tb, &Options{Prefix: "t:", RedisTimeout: budget})
	for range 3 {
		start := time.Now()
		v, err := l.Get(context.Background(), "a")
		took := time.Since(start)
		require.NoError(t, err)
		require.Equal(t, "one", v.Val)
		// The bound is coarse: without it a Get waits go-redis's 5s dial
		// timeout and more.
		require.Less(t, took, budget+time.Second, "Get bounded by its Redis budget and the load")
	}
}
