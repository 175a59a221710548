package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterState is what a Loader keeps about a Redis Cluster: its masters'
// breakers (its Breaker's) and when it last asked the client to reload the
// slot map. For other clients nodes and reloadState are nil.
type clusterState struct {
	nodes *nodeBreakers // per master on a Redis Cluster with the breaker on (brk.nodes); nil otherwise
	// reloadState reloads the slot map of a Redis Cluster client (nil for
	// other clients); lastReload is when it was last called
	// (Loader.elapsed). See reloadTopology.
	reloadState func(ctx context.Context)
	lastReload  atomic.Int64
}

func (c *clusterState) init(rdb redis.UniversalClient, brk *Breaker) {
	if brk != nil {
		c.nodes = brk.nodes
	}
	c.lastReload.Store(-int64(topologyReloadEvery))
	if r, ok := rdb.(interface{ ReloadState(context.Context) }); ok { // *redis.ClusterClient
		c.reloadState = r.ReloadState
	}
}

// nodeBreakers are a Breaker's breakers on a Redis Cluster: one per
// master, so that a master that fails (until its replica is promoted) trips
// only the calls for its slots, and the others keep answering from Redis.
// Calls that span masters (GetMany's pipelines, batches of queued
// invalidations) go through the Breaker's core breaker. A shared Breaker's
// are shared by its members, as its core is.
type nodeBreakers struct {
	cc *redis.ClusterClient
	m  sync.Map // master address → *breaker
	// mapped is set once the client has found a key's master: it has
	// loaded the slot map, and finding masters no longer calls Redis.
	mapped atomic.Bool
}

// breakerFor returns the breaker of calls about rkey: on a Redis Cluster
// the breaker of rkey's master, else (or when rkey is "", or its master is
// not known) the Loader's. Until the client has loaded the cluster's slot
// map, finding a master asks the cluster: that is bounded by, and spent
// from, b.
func (l *Loader[T]) breakerFor(ctx context.Context, b *redisBudget, rkey string) *breaker {
	if l.cluster.nodes == nil || rkey == "" {
		return l.breaker
	}
	var (
		node *redis.Client
		err  error
	)
	if l.cluster.nodes.mapped.Load() {
		node, err = l.cluster.nodes.cc.MasterForKey(ctx, rkey)
	} else {
		if b.left <= 0 {
			return l.breaker
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, b.left)
		node, err = l.cluster.nodes.cc.MasterForKey(cctx, rkey)
		cancel()
		b.left -= time.Since(start)
		if err == nil {
			l.cluster.nodes.mapped.Store(true)
		}
	}
	if err != nil {
		return l.breaker
	}
	addr := node.Options().Addr
	if br, ok := l.cluster.nodes.m.Load(addr); ok {
		return br.(*breaker)
	}
	br, _ := l.cluster.nodes.m.LoadOrStore(addr, l.brk.newBreaker(addr))
	return br.(*breaker)
}

// masterOf returns the address of rkey's master on a Redis Cluster whose
// slot map the client has loaded; "" otherwise.
func (l *Loader[T]) masterOf(ctx context.Context, rkey string) string {
	if l.cluster.nodes == nil || !l.cluster.nodes.mapped.Load() {
		return ""
	}
	node, err := l.cluster.nodes.cc.MasterForKey(ctx, rkey)
	if err != nil {
		return ""
	}
	return node.Options().Addr
}

const (
	// topologyReloadEvery rate-limits the slot map reloads that failed
	// calls on a Redis Cluster client ask for, per Loader.
	topologyReloadEvery = 250 * time.Millisecond
)

// reloadTopology asks a Redis Cluster client to reload its slot map, at
// most once per topologyReloadEvery; calls that failed for want of an
// answer (not error replies, not callers leaving) and calls skipped by the
// open breaker ask for it. A master that crashed sends no MOVED, so without
// this go-redis would go on calling its dead address for the failed-over
// slots until its ClusterStateReloadInterval (60s by default) runs out. The
// reload is lazy (go-redis runs it on a goroutine of its own, one at a
// time, asking the known nodes in turn for CLUSTER SLOTS), so it costs the
// caller nothing; until the replica is promoted it finds the old map, and
// the next failure asks again.
func (l *Loader[T]) reloadTopology(ctx context.Context) {
	if l.cluster.reloadState == nil {
		return
	}
	now := int64(l.elapsed())
	last := l.cluster.lastReload.Load()
	if now-last < int64(topologyReloadEvery) || !l.cluster.lastReload.CompareAndSwap(last, now) {
		return
	}
	l.cluster.reloadState(context.WithoutCancel(ctx))
}
