package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestSharedBreakerRealRedis: Loaders sharing a Breaker on the real Redis,
// reached through a proxy that then refuses it. The first Failures failed
// calls, one per Loader, open the breaker for every member; while it is
// not closed no member calls Redis, one prober runs, and every Get
// answers from the database; once Redis is reachable again the prober
// closes it for all, each member reporting every change in its own Stats
// and metrics, and Gets hit again.
func TestSharedBreakerRealRedis(t *testing.T) {
	verifyNoLeaks(t) // first: it runs after every other cleanup
	direct := testenv.Redis(t, "")
	p, err := faultproxy.Start(testenv.RedisAddr())
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	waitNoProbers(t) // those of earlier tests

	const n, failures = 5, 3
	br, err := NewBreaker(rdb, &BreakerOptions{Failures: failures, Cooldown: faultCooldown})
	require.NoError(t, err)
	// No early refresh: no background call may count towards the breaker.
	s := newSharedLoaders(t, rdb, br, n, Options{Prefix: testenv.Prefix(t, direct, "cachetest:"), DisableEarlyRefresh: true})
	ctx := context.Background()
	opened := make([]<-chan struct{}, n)
	closed := make([]<-chan struct{}, n)
	for i, ev := range s.ev {
		opened[i], closed[i] = ev.on(EventBreakerOpen), ev.on(EventBreakerClosed)
	}
	s.tb.put("a", "a1")
	for i, l := range s.ls {
		require.NoError(t, l.Set(ctx, "a", row{"a1", 1}))
		require.Equal(t, "a1", getRow(t, l, "a").Val)
		require.EqualValues(t, 1, l.Stats().Hits, "loader %d", i)
	}

	require.NoError(t, p.Set(faultproxy.Refuse, 0))
	failOncePerLoader(t, s.ls, failures)
	for i := range s.ls {
		wait(t, opened[i], fmt.Sprintf("loader %d to report the breaker open", i))
	}
	require.Equal(t, 1, probers(), "one prober for the shared breaker")
	for i, l := range s.ls {
		st := l.Stats()
		require.NotEqual(t, BreakerClosed, st.Breaker, "loader %d: open, or half-open past the cooldown", i)
		require.EqualValues(t, 1, st.BreakerOpened, "loader %d", i)
		require.NotEqual(t, BreakerClosed, s.gauge(i), "loader %d's gauge", i)
	}
	errs := sumStats(s.ls).RedisErrors
	require.EqualValues(t, failures, errs, "the members' failures together opened it")

	// Every member answers from the database without calling Redis.
	for round := range 3 {
		for i, l := range s.ls {
			before := l.Stats()
			v, err := l.Get(ctx, "a")
			require.NoError(t, err, "round %d, loader %d", round, i)
			require.Equal(t, "a1", v.Val)
			after := l.Stats()
			require.Greater(t, after.RedisSkipped, before.RedisSkipped, "round %d, loader %d skipped Redis", round, i)
			require.Equal(t, before.Loads+1, after.Loads, "round %d, loader %d loaded", round, i)
		}
	}
	require.Equal(t, errs, sumStats(s.ls).RedisErrors, "no member called Redis while the breaker was not closed")
	require.Equal(t, 1, probers())

	require.NoError(t, p.Set(faultproxy.Pass, 0))
	for i := range s.ls {
		wait(t, closed[i], fmt.Sprintf("loader %d to report the breaker closed", i))
	}
	opens := s.ls[0].Stats().BreakerOpened
	for i, l := range s.ls {
		st := l.Stats()
		require.Equal(t, BreakerClosed, st.Breaker, "loader %d", i)
		require.EqualValues(t, 1, st.BreakerClosed, "loader %d", i)
		require.Equal(t, opens, st.BreakerOpened, "loader %d saw every reopening", i)
		require.Equal(t, BreakerClosed, s.gauge(i), "loader %d's gauge", i)
		before := st.Hits
		require.Equal(t, "a1", getRow(t, l, "a").Val)
		require.Equal(t, before+1, l.Stats().Hits, "loader %d hits again", i)
	}
	require.Equal(t, BreakerClosed, br.State())
	for _, l := range s.ls {
		require.NoError(t, l.Close())
	}
	waitNoProbers(t)
}

// TestSharedBreakerClusterRealRedis: on a Redis Cluster the members of a
// Breaker share its per-master breakers. A master that crashed opens its
// breaker through one Loader's failures; the other Loader then skips that
// master without having failed once, and keeps hitting on the others.
func TestSharedBreakerClusterRealRedis(t *testing.T) {
	lc := testenv.StartCluster(t, testenv.ClusterConfig{NodeTimeout: time.Minute})
	ctx := context.Background()
	waitNoProbers(t) // those of earlier tests
	br, err := NewBreaker(lc.Client, &BreakerOptions{Failures: 2})
	require.NoError(t, err)
	s := newSharedLoaders(t, lc.Client, br, 2, Options{Prefix: testenv.Prefix(t, lc.Client, "cachetest:"),
		TTL: time.Hour, DisableEarlyRefresh: true})
	a, b := s.ls[0], s.ls[1]
	const keys = 30
	master := map[string][]string{} // b's keys by master
	for i := range keys {
		k := fmt.Sprint("k", i)
		s.tb.put(k, fmt.Sprint("v", i))
		for _, l := range s.ls {
			require.NoError(t, l.Set(ctx, k, row{fmt.Sprint("v", i), 1}))
		}
		node, err := lc.Client.MasterForKey(ctx, b.Key(k))
		require.NoError(t, err)
		master[node.Options().Addr] = append(master[node.Options().Addr], k)
	}
	require.Len(t, master, 3, "b's keys are spread over the 3 masters")
	var dead string
	for addr := range master {
		dead = addr
		break
	}
	// a's keys of the dead master (a's keys differ from b's: another name).
	var aDead []string
	for i := range keys {
		k := fmt.Sprint("k", i)
		node, err := lc.Client.MasterForKey(ctx, a.Key(k))
		require.NoError(t, err)
		if node.Options().Addr == dead {
			aDead = append(aDead, k)
		}
	}
	require.NotEmpty(t, aDead)
	opened := s.ev[1].on(EventBreakerOpen)
	lc.Kill(t, dead)

	// a's Gets of the dead master's keys fail until its breaker opens, for b too.
	for i := 0; ; i++ {
		select {
		case <-opened:
		default:
			require.Less(t, i, 100, "the dead master's breaker did not open")
			_, err := a.Get(ctx, aDead[i%len(aDead)])
			require.NoError(t, err)
			continue
		}
		break
	}
	require.NotZero(t, a.Stats().RedisErrors)
	for round := range 3 {
		for addr, ks := range master {
			for _, k := range ks {
				v, hit, err := b.get(ctx, k)
				require.NoError(t, err, "round %d, key %s", round, k)
				require.Equal(t, fmt.Sprint("v", k[1:]), v.Val)
				require.Equal(t, addr != dead, hit, "round %d, key %s: hit on a live master only", round, k)
			}
		}
	}
	st := b.Stats()
	require.Zero(t, st.RedisErrors, "b never called the dead master: a's failures opened its breaker")
	require.NotZero(t, st.RedisSkipped)
	require.NotEqual(t, BreakerClosed, st.Breaker)
	require.NotZero(t, st.BreakerOpened)
	require.Zero(t, st.BreakerClosed)
	require.Equal(t, BreakerClosed, BreakerState(br.core.mirror.Load()), "the live masters' calls keep the core closed")
	require.Equal(t, 1, probers(), "one prober for both")
}
