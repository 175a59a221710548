package cache

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// tierProbe drives the failover tests of the in-process tier: a, with the
// tier on, reads; b, another process without it, writes (a row version,
// then Invalidate) on one table.
type tierProbe struct {
	t     *testing.T
	a, b  *Loader[row]
	tb    *table
	keys  []string
	floor []int64 // floor[i]: the version of keys[i] whose invalidation returned
}

func newTierProbe(t *testing.T, a, b *Loader[row], tb *table, n int) *tierProbe {
	p := &tierProbe{t: t, a: a, b: b, tb: tb, keys: make([]string, n), floor: make([]int64, n)}
	for i := range p.keys {
		p.keys[i] = "k" + strconv.Itoa(i)
		tb.put(p.keys[i], "v")
	}
	return p
}

// get Gets keys[i] from a: no error (fail-open), and never older than an
// invalidation that returned before the Get began.
func (p *tierProbe) get(i int) error {
	v, err := p.a.Get(context.Background(), p.keys[i])
	if err != nil {
		return fmt.Errorf("a Get errs (fail-open): %w", err)
	}
	if v.Ver < p.floor[i] {
		return fmt.Errorf("%s: version %d, older than the invalidation of %d that returned before the Get began", p.keys[i], v.Ver, p.floor[i])
	}
	return nil
}

func (p *tierProbe) check(i int) {
	p.t.Helper()
	require.NoError(p.t, p.get(i))
}

// write changes keys[i]'s row and invalidates it through b; the floor
// rises only if the invalidation returned (not queued).
func (p *tierProbe) write(i int) {
	r := p.tb.put(p.keys[i], "v")
	if p.b.Invalidate(context.Background(), p.keys[i]) == nil {
		p.floor[i] = r.Ver
	}
}

// churn writes and reads every key, round after round, on a goroutine of
// its own until the returned func is called, which returns the first
// failure (see get).
func (p *tierProbe) churn() (stop func() error) {
	done, failed := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			for i := range p.keys {
				p.write(i)
				for _, j := range []int{i, (i + 7) % len(p.keys)} {
					if err := p.get(j); err != nil {
						failed <- err
						return
					}
				}
			}
			select {
			case <-done:
				failed <- nil
				return
			default:
			}
		}
	}()
	return func() error {
		close(done)
		return <-failed
	}
}

// answersLocally reads every key until a Get was answered from the tier.
func (p *tierProbe) answersLocally() {
	p.t.Helper()
	hits := p.a.Stats().LocalHits
	deadline := time.Now().Add(30 * time.Second)
	for p.a.Stats().LocalHits == hits {
		require.True(p.t, time.Now().Before(deadline), "the tier never answered: %+v", p.a.LocalStats())
		for i := range p.keys {
			p.check(i)
		}
		p.a.tier.stream.Wait(context.Background()) // the fills' own lease and fill messages applied
	}
}

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
	p := newTierProbe(t, a, b, tb, 30)
	rkeys := make([]string, len(p.keys))
	for i, k := range p.keys {
		rkeys[i] = a.Key(k)
	}
	masters := map[string]bool{}
	for m := range requireEveryMaster(t, lc.Client, rkeys) {
		masters[m] = true
	}
	// followed waits until the tier's streams are those of masters.
	followed := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ls, addrs := a.LocalStats(), a.tier.stream.Addrs()
			same := len(addrs) == len(masters)
			for _, addr := range addrs {
				same = same && masters[addr]
			}
			if ls.Up && same {
				return
			}
			require.True(t, time.Now().Before(deadline), "the tier never followed the masters %v: %+v %v", masters, ls, addrs)
			time.Sleep(10 * time.Millisecond)
		}
	}
	followed()
	require.Equal(t, 3, a.LocalStats().Streams)

	// Healthy: local hits on every master's keys, invalidations seen.
	p.answersLocally()
	for i := range p.keys {
		p.write(i)
		p.check(i)
		r, _ := tb.get(p.keys[i])
		require.Equal(t, p.floor[i], r.Ver, "an invalidation failed on a healthy cluster")
	}

	// A master dies under reads and writes.
	var victim string
	for m := range masters {
		victim = m
		break
	}
	replica, err := lc.ReplicaOf(ctx, victim)
	require.NoError(t, err)
	flushes := a.LocalStats().Flushes
	stop := p.churn()
	lc.Kill(t, victim)
	lc.WaitMaster(t, replica, 30*time.Second)
	require.NoError(t, stop())
	delete(masters, victim)
	masters[replica] = true
	followed()
	require.Greater(t, a.LocalStats().Flushes, flushes, "the dead master's stream did not flush the tier")

	// Answering from the tier again, still never older than an
	// invalidation that returned.
	p.answersLocally()
	require.NoError(t, p.churn()())
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
	tb := newTable()
	ra, rb := ls.Client(t), ls.Client(t)
	prefix := testenv.Prefix(t, ra, "cachetest:")
	a := newLoader(t, ra, tb, &Options{Prefix: prefix, Local: &LocalOptions{}, RedisTimeout: sentinelRedisTimeout})
	b := newLoader(t, rb, tb, &Options{Prefix: prefix, RedisTimeout: sentinelRedisTimeout})
	p := newTierProbe(t, a, b, tb, 20)
	p.answersLocally()

	flushes := a.LocalStats().Flushes
	stop := p.churn()
	old := ls.KillMaster(t)
	ls.WaitPromoted(t, old, 30*time.Second)
	require.NoError(t, stop())
	p.answersLocally()
	require.Greater(t, a.LocalStats().Flushes, flushes, "the dead master's stream did not flush the tier")
	require.NoError(t, p.churn()())
	t.Logf("tier after the failover: %+v", a.LocalStats())
}
