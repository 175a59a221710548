package cache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// probeEvery is how often the prober asks Redis while a breaker is open.
const probeEvery = 25 * time.Millisecond

// startProber starts the Breaker's prober unless it runs or the Breaker
// has no members: while any of its breakers is not closed, it PINGs Redis
// (the master, on a Cluster) every probeEvery. During a breaker's cooldown
// the PING goes around the breaker: it finds out early that Redis is back
// and replaces the pool's dead connections; once the cooldown has passed,
// the PING is the breaker's half-open probe, and its success closes the
// breaker. Hits resume within probeEvery of the cooldown's end after Redis
// answers again, whether or not a Get comes by, and no Get waits on a
// probe: calls are skipped while a breaker is not closed. A Breaker shared
// by Loaders has one prober, whichever member saw it open.
func (b *Breaker) startProber() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.prober != nil || len(*b.members.Load()) == 0 {
		return
	}
	p := &proberRun{stop: make(chan struct{}), done: make(chan struct{})}
	b.prober = p
	go b.probeLoop(p)
}

// probeLoop is the prober: it runs until no breaker is open or the last
// member leaves (stop).
func (b *Breaker) probeLoop(p *proberRun) {
	defer close(p.done)
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-p.stop:
			return
		}
		if b.probeAll() {
			continue
		}
		// A breaker may have opened after probeAll looked: look again,
		// holding mu, so that a startProber for it either finds this
		// prober still running or starts the next.
		b.mu.Lock()
		stay := b.prober == p && b.worst() != BreakerClosed
		if !stay && b.prober == p {
			b.prober = nil
		}
		b.mu.Unlock()
		if !stay {
			return
		}
	}
}

// probeAll probes every breaker that is not closed and reports whether it
// found one.
func (b *Breaker) probeAll() (found bool) {
	if b.core.state() != BreakerClosed {
		found = true
		b.probe(b.core, func(ctx context.Context) error { return b.rdb.Ping(ctx).Err() })
	}
	if b.nodes == nil {
		return found
	}
	b.nodes.m.Range(func(addr, br any) bool {
		if br := br.(*breaker); br.state() != BreakerClosed {
			found = true
			b.probe(br, b.pingMaster(addr.(string)))
		}
		return true
	})
	return found
}

// probe sends ping through br when its cooldown has passed (half-open), or
// around it while it is open. The PING is bounded by the longest
// RedisTimeout of the members.
func (b *Breaker) probe(br *breaker, ping func(ctx context.Context) error) {
	ctx := context.Background()
	timeout := time.Duration(b.probeTimeout.Load())
	if br.state() == BreakerOpen {
		_ = callWithTimeout(ctx, timeout, ping)
		return
	}
	_, err := br.cb.Execute(func() (struct{}, error) {
		return struct{}{}, callWithTimeout(ctx, timeout, ping)
	})
	b.flush()
	if err != nil {
		b.reloadTopology(ctx)
	}
}

// reloadTopology is Loader.reloadTopology for the prober's failed probes:
// it asks a Redis Cluster client to reload its slot map, at most once per
// topologyReloadEvery.
func (b *Breaker) reloadTopology(ctx context.Context) {
	if b.reloadState == nil {
		return
	}
	now := int64(time.Since(b.born))
	last := b.lastReload.Load()
	if now-last < int64(topologyReloadEvery) || !b.lastReload.CompareAndSwap(last, now) {
		return
	}
	b.reloadState(context.WithoutCancel(ctx))
}

// pingMaster returns a PING of the Cluster master at addr. A breaker whose
// address is no longer a master's (its replica took over, and the keys'
// calls go to the new master's breaker) is closed by a probe that
// succeeds: nothing will call it.
func (b *Breaker) pingMaster(addr string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var found atomic.Bool // ForEachMaster calls at once
		err := b.nodes.cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
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
