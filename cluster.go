package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterState is what a Loader keeps about a Redis Cluster: its masters'
// breakers and when it last asked the client to reload the slot map. For
// other clients nodes and reloadState are nil.
type clusterState struct {
	nodes *nodeBreakers // per master on a Redis Cluster with the breaker on; nil otherwise
	// reloadState reloads the slot map of a Redis Cluster client (nil for
	// other clients); lastReload is when it was last called
	// (Loader.elapsed). See reloadTopology.
	reloadState func(ctx context.Context)
	lastReload  atomic.Int64
}

func (c *clusterState) init(rdb redis.UniversalClient, breakerOn bool) {
	if cc, ok := rdb.(*redis.ClusterClient); ok && breakerOn {
		c.nodes = &nodeBreakers{cc: cc}
	}
	c.lastReload.Store(-int64(topologyReloadEvery))
	if r, ok := rdb.(interface{ ReloadState(context.Context) }); ok { // *redis.ClusterClient
		c.reloadState = r.ReloadState
	}
}

// nodeBreakers are a Loader's breakers on a Redis Cluster: one per master,
// so that a master that fails (until its replica is promoted) trips only
// the calls for its slots, and the others keep answering from Redis. Calls
// that span masters (GetMany's pipelines, batches of queued invalidations)
// go through the Loader's own breaker.
type nodeBreakers struct {
	cc *redis.ClusterClient
	m  sync.Map // master address → *breaker
	// reported is the state last counted and logged: the most severe
	// state among the breakers (see flushNodeBreakerChanges).
	reported atomic.Int32
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
	br, _ := l.cluster.nodes.m.LoadOrStore(addr, newBreaker(l.name+"@"+addr, &l.s, &l.breakerChanges))
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

func (l *Loader[T]) worstBreakerState() BreakerState {
	if l.breaker == nil {
		return BreakerClosed
	}
	worst := l.breaker.state()
	if l.cluster.nodes != nil {
		l.cluster.nodes.m.Range(func(_, br any) bool {
			worst = max(worst, br.(*breaker).state())
			return true
		})
	}
	return worst
}

// flushNodeBreakerChanges is flushBreakerChanges on a Redis Cluster: the
// events and logs follow the most severe state of the masters' breakers
// (so cache_breaker_state reads "open" while any is), reported only when
// it changes. One flusher at a time computes and reports, so that reports
// keep the order of the states; a flusher that finds another at work
// leaves its changes to it (as does a Recorder or Logger that asks for
// the breaker's state while being told of a change).
func (l *Loader[T]) flushNodeBreakerChanges() {
	for l.breakerChanges.n.Load() > 0 {
		if !l.breakerChanges.flushing.TryLock() {
			return
		}
		if len(l.breakerChanges.take()) > 0 {
			worst := l.worstBreakerState() // may queue changes: the loop takes them
			if BreakerState(l.cluster.nodes.reported.Swap(int32(worst))) != worst {
				l.reportBreaker(worst)
			}
			l.wakeRetrier() // a master's breaker moved: the queue may land
		}
		l.breakerChanges.flushing.Unlock()
	}
}
