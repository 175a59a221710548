package cache

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/f4df6ac3/cache/internal/script"
)

const (
	// retryQueueSize bounds the invalidations waiting for Redis.
	retryQueueSize = 4096
	// Queued invalidations are retried with backoff from retryBackoff up
	// to retryMaxBackoff, and sooner when the circuit breaker closes or
	// another Redis call succeeds (see nudgeRetrier).
	retryBackoff    = 50 * time.Millisecond
	retryMaxBackoff = 5 * time.Second
)

// retrier holds what Redis did not take — invalidations WriteThrough could
// not apply, stores that could not be sent after their callers were
// answered — for retryLoop, and retryLoop's own state.
type retrier struct {
	pending   pendingSet     // invalidations WriteThrough could not apply
	leftovers leftoverStores // stores after answering that Redis did not answer
	report    sync.Mutex     // serialises reportPending
	wake      chan struct{}  // wakes retryLoop: a key was queued, the breaker changed state, or Redis answered
	// retrying is set while retryLoop applies the queue, and lastRetry is
	// when it last finished (Loader.elapsed): see nudgeRetrier.
	retrying  atomic.Bool
	lastRetry atomic.Int64
	// wait bounds retryLoop's backoff: retryBackoff and retryMaxBackoff,
	// but in tests.
	wait struct{ first, max time.Duration }
}

func (r *retrier) init() {
	r.wake = make(chan struct{}, 1)
	r.lastRetry.Store(-int64(retryBackoff))
	r.wait.first, r.wait.max = retryBackoff, retryMaxBackoff
}

// queued reports whether anything waits for Redis.
func (r *retrier) queued() bool {
	return r.pending.n.Load() > 0 || r.leftovers.n.Load() > 0
}

// pendingSet holds the keys whose invalidation is queued. Gets of those keys
// bypass Redis until it lands, so a stale entry is never served meanwhile.
type pendingSet struct {
	n  atomic.Int64 // len(keys), read without the lock on the hit path
	mu sync.Mutex   // protects keys and seq
	// keys maps each queued key to the sequence number of its latest
	// enqueue, so that an invalidation applied from a snapshot does not
	// remove a newer enqueue of the same key.
	keys map[string]uint64
	seq  uint64
}

func (p *pendingSet) has(key string) bool {
	if p.n.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.keys[key]
	return ok
}

// add queues key and reports whether there was room.
func (p *pendingSet) add(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		p.keys = make(map[string]uint64)
	}
	if _, ok := p.keys[key]; !ok && len(p.keys) >= retryQueueSize {
		return false
	}
	p.seq++
	p.keys[key] = p.seq
	p.n.Store(int64(len(p.keys)))
	return true
}

// snapshotOf returns those of keys that are queued, with their enqueue
// sequence numbers, or nil.
func (p *pendingSet) snapshotOf(keys []string) map[string]uint64 {
	if p.n.Load() == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var snap map[string]uint64
	for _, k := range keys {
		if seq, ok := p.keys[k]; ok {
			if snap == nil {
				snap = make(map[string]uint64)
			}
			snap[k] = seq
		}
	}
	return snap
}

// snapshot returns the queued keys with their enqueue sequence numbers.
func (p *pendingSet) snapshot() map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.keys)
}

// remove drops the keys of snap that were not enqueued again since.
func (p *pendingSet) remove(snap map[string]uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, seq := range snap {
		if p.keys[k] == seq {
			delete(p.keys, k)
		}
	}
	p.n.Store(int64(len(p.keys)))
}

// leftoverStores holds the stores (fills and lease releases) that could
// not be sent after their callers were answered, Redis failing or the
// breaker open. Each leaves a lease in Redis that other processes' Gets
// would wait on until it lapses, so retryLoop sends them again with the
// queued invalidations until Redis answers. A store sent late is as safe as
// one sent at once: it lands only while its token is still the entry's
// lease, that is while no invalidation, Set or other lease came since the
// grant. Past the lease's lifetime a store is dropped: the lease lapsed
// by itself.
type leftoverStores struct {
	n    atomic.Int64 // len(list), read without the lock after Redis calls
	mu   sync.Mutex   // protects list
	list []leftover
}

type leftover struct {
	st    store
	until time.Time // when the lease lapses by itself, at the latest
}

// add keeps st until until; a full list drops it (its lease lapses).
func (s *leftoverStores) add(st store, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) >= retryQueueSize {
		return
	}
	s.list = append(s.list, leftover{st, until})
	s.n.Store(int64(len(s.list)))
}

// take empties the list and returns what it held whose lease may still
// live.
func (s *leftoverStores) take(now time.Time) []store {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store
	for _, lo := range s.list {
		if now.Before(lo.until) {
			out = append(out, lo.st)
		}
	}
	s.list = nil
	s.n.Store(0)
	return out
}

// storeAfter sends st after its callers were answered, with a budget of
// its own; when Redis does not answer, retryLoop sends it again.
func (l *Loader[T]) storeAfter(ctx context.Context, st store) {
	if ok, _ := l.runStore(ctx, &redisBudget{left: l.s.redisTimeout}, st); !ok {
		l.retry.leftovers.add(st, time.Now().Add(l.s.leaseTimeout))
		l.wakeRetrier()
	}
}

// storeManyAfter is storeAfter for stores sent in one pipelined round.
func (l *Loader[T]) storeManyAfter(ctx context.Context, stores []store) {
	for i, ok := range l.storeMany(ctx, &redisBudget{left: l.s.redisTimeout}, stores) {
		if !ok {
			l.retry.leftovers.add(stores[i], time.Now().Add(l.s.leaseTimeout))
			l.wakeRetrier()
		}
	}
}

// applyLeftovers sends the leftover stores through call and reports
// whether none is left.
func (l *Loader[T]) applyLeftovers(call redisCaller) bool {
	stores := l.retry.leftovers.take(time.Now())
	if len(stores) == 0 {
		return true
	}
	calls := make([]script.Call, len(stores))
	for i, st := range stores {
		calls[i] = st.call
	}
	cmds, _ := l.runScriptsWith(context.Background(), &redisBudget{left: l.s.redisTimeout}, calls, call)
	left := true
	until := time.Now().Add(l.s.leaseTimeout)
	for i, c := range cmds {
		if c == nil || c.Err() != nil {
			l.retry.leftovers.add(stores[i], until)
			left = false
			continue
		}
		n, _ := c.Int64()
		l.countStored(stores[i], n)
	}
	return left
}

// enqueueInvalidation queues key for retryLoop; a full queue drops it.
func (l *Loader[T]) enqueueInvalidation(key string) {
	if !l.retry.pending.add(key) {
		l.count(EventInvalidationDropped)
		l.s.logger.Error("cache: invalidation dropped: retry queue full; entry may stay stale until its TTL",
			"loader", l.name, "keys", 1)
		return
	}
	l.count(EventInvalidationQueued)
	l.reportPending()
	l.wakeRetrier()
}

// reportPending tells a PendingRecorder how many invalidations are queued
// now. Reports are serialised and each reads the number under that lock,
// so the last report reflects the last change.
func (l *Loader[T]) reportPending() {
	pr, ok := l.s.recorder.(PendingRecorder)
	if !ok {
		return
	}
	l.retry.report.Lock()
	defer l.retry.report.Unlock()
	pr.InvalidationsPending(l.name, int(l.retry.pending.n.Load()))
}

func (l *Loader[T]) wakeRetrier() {
	select {
	case l.retry.wake <- struct{}{}:
	default:
	}
}

// nudgeRetrier wakes retryLoop after a Redis call succeeded while
// invalidations are queued: Redis may be back before the breaker (or the
// backoff) says so, and other processes read the stale entries until the
// queue lands. It does so no sooner than retryBackoff after the last try
// ended, and not during one: with Redis partly down (a Cluster master
// lost, its keys the ones queued) other calls keep succeeding, and each
// Loader then retries its queue at most every retryBackoff, one pipeline
// of the keys still queued, each bounded by RedisTimeout.
func (l *Loader[T]) nudgeRetrier() {
	if l.retry.retrying.Load() || l.elapsed()-time.Duration(l.retry.lastRetry.Load()) < retryBackoff {
		return
	}
	l.wakeRetrier()
}

// retryLoop applies queued invalidations (and sends leftover stores) in batches, with exponential
// backoff while Redis keeps failing and sooner when the breaker closes or
// other calls succeed, until Close; then it gives them one last try, past
// the breaker.
func (l *Loader[T]) retryLoop() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var backoff time.Duration // the next wait after a failed try, 0 until one
	for {
		select {
		case <-l.retry.wake:
		case <-timer.C:
		case <-l.bg.done:
			// The breaker may still be open (or about to let one probe
			// through) although Redis is back: asking it would drop the
			// queue without a try. One call, bounded by RedisTimeout as
			// every try is.
			l.applyPending(l.redisCallPastBreaker)
			l.applyLeftovers(l.redisCallPastBreaker) // what fails lapses by itself
			if snap := l.retry.pending.snapshot(); len(snap) > 0 {
				for range snap {
					l.count(EventInvalidationDropped)
				}
				l.s.logger.Error("cache: invalidations dropped on Close; entries may stay stale until their TTL",
					"loader", l.name, "keys", len(snap))
				l.retry.pending.remove(snap)
				l.reportPending()
			}
			return
		}
		// Both, whatever the first reports.
		if done := l.applyPending(l.redisCallKey); l.applyLeftovers(l.redisCallKey) && done {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, l.retry.wait.first), l.retry.wait.max)
		timer.Reset(backoff)
	}
}

// applyPending invalidates the queued keys through call and reports
// whether none is left.
func (l *Loader[T]) applyPending(call redisCaller) bool {
	snap := l.retry.pending.snapshot()
	if len(snap) == 0 {
		return true
	}
	l.retry.retrying.Store(true)
	defer func() {
		l.retry.lastRetry.Store(int64(l.elapsed()))
		l.retry.retrying.Store(false)
	}()
	keys := slices.Collect(maps.Keys(snap))
	failed, _ := l.invalidateWith(context.Background(), keys, nil, l.s.redisTimeout, call)
	l.dequeue(snap, failed)
	return len(failed) == 0
}

// dequeue drops from the queue the enqueues in snap, taken before an
// invalidation of their keys was sent, that it applied (all but failed):
// an invalidation that landed after a queued one was enqueued covers it.
// Enqueues made since snap stay queued.
func (l *Loader[T]) dequeue(snap map[string]uint64, failed []string) {
	for _, k := range failed {
		delete(snap, k)
	}
	if len(snap) == 0 {
		return
	}
	l.retry.pending.remove(snap)
	l.reportPending()
	for range snap {
		l.count(EventInvalidationRetried)
	}
}
