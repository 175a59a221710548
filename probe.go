package cache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// probeEvery is how often the prober asks Redis while a breaker is open.
const probeEvery = 25 * time.Millisecond

// startProber starts the prober unless it runs: while any of the Loader's
// breakers is not closed, it PINGs Redis (the master, on a Cluster) every
// probeEvery. During a breaker's cooldown the PING goes around the breaker:
// it finds out early that Redis is back and replaces the pool's dead
// connections; once the cooldown has passed, the PING is the breaker's
// half-open probe, and its success closes the breaker. Hits resume within
// probeEvery of the cooldown's end after Redis answers again, whether or
// not a Get comes by, and no Get waits on a probe: calls are skipped
// while a breaker is not closed.
func (l *Loader[T]) startProber() {
	if l.breaker == nil || !l.probing.CompareAndSwap(false, true) {
		return
	}
	l.bg.Go(l.probeLoop)
}

func (l *Loader[T]) probeLoop() {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-l.bg.done:
			l.probing.Store(false)
			return
		}
		if l.probeAll() {
			continue
		}
		l.probing.Store(false)
		// A breaker may have opened after probeAll looked: look again.
		if !l.anyBreakerOpen() || !l.probing.CompareAndSwap(false, true) {
			return
		}
	}
}

// probeAll probes every breaker that is not closed and reports whether it
// found one.
func (l *Loader[T]) probeAll() (found bool) {
	if l.breaker.state() != BreakerClosed {
		found = true
		l.probe(l.breaker, func(ctx context.Context) error { return l.rdb.Ping(ctx).Err() })
	}
	if l.cluster.nodes == nil {
		return found
	}
	l.cluster.nodes.m.Range(func(addr, br any) bool {
		if b := br.(*breaker); b.state() != BreakerClosed {
			found = true
			l.probe(b, l.pingMaster(addr.(string)))
		}
		return true
	})
	return found
}

// probe sends ping through br when its cooldown has passed (half-open), or
// around it while it is open.
func (l *Loader[T]) probe(br *breaker, ping func(ctx context.Context) error) {
	ctx := context.Background()
	if br.state() == BreakerOpen {
		_ = callWithTimeout(ctx, l.s.redisTimeout, ping)
		return
	}
	_, err := br.cb.Execute(func() (struct{}, error) {
		return struct{}{}, callWithTimeout(ctx, l.s.redisTimeout, ping)
	})
	l.flushBreakerChanges()
	if err != nil {
		l.reloadTopology(ctx)
	}
}

// pingMaster returns a PING of the Cluster master at addr. A breaker whose
// address is no longer a master's (its replica took over, and the keys'
// calls go to the new master's breaker) is closed by a probe that
// succeeds: nothing will call it.
func (l *Loader[T]) pingMaster(addr string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var found atomic.Bool // ForEachMaster calls at once
		err := l.cluster.nodes.cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			if m.Options().Addr != addr {
				return nil
			}
			found.Store(true)
			return m.Ping(ctx).Err()
		})
		if !found.Load() && err == nil {
			return nil
		}
		return err
	}
}

// anyBreakerOpen reports whether a breaker of the Loader is not closed.
func (l *Loader[T]) anyBreakerOpen() bool {
	return l.worstBreakerState() != BreakerClosed
}
