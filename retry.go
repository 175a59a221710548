package cache

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
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

// enqueueInvalidation queues key for retryLoop; a full queue drops it.
func (l *Loader[T]) enqueueInvalidation(key string) {
	if !l.pending.add(key) {
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
	l.pendingReport.Lock()
	defer l.pendingReport.Unlock()
	pr.InvalidationsPending(l.name, int(l.pending.n.Load()))
}

func (l *Loader[T]) wakeRetrier() {
	select {
	case l.wake <- struct{}{}:
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
	if l.retrying.Load() || l.elapsed()-time.Duration(l.lastRetry.Load()) < retryBackoff {
		return
	}
	l.wakeRetrier()
}

// retryLoop applies queued invalidations in batches, with exponential
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
		case <-l.wake:
		case <-timer.C:
		case <-l.bg.done:
			// The breaker may still be open (or about to let one probe
			// through) although Redis is back: asking it would drop the
			// queue without a try. One call, bounded by RedisTimeout as
			// every try is.
			l.applyPending(l.redisCallPastBreaker)
			if snap := l.pending.snapshot(); len(snap) > 0 {
				for range snap {
					l.count(EventInvalidationDropped)
				}
				l.s.logger.Error("cache: invalidations dropped on Close; entries may stay stale until their TTL",
					"loader", l.name, "keys", len(snap))
				l.pending.remove(snap)
				l.reportPending()
			}
			return
		}
		if l.applyPending(l.redisCallKey) {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, l.retryWait.first), l.retryWait.max)
		timer.Reset(backoff)
	}
}

// applyPending invalidates the queued keys through call and reports
// whether none is left.
func (l *Loader[T]) applyPending(call redisCaller) bool {
	snap := l.pending.snapshot()
	if len(snap) == 0 {
		return true
	}
	l.retrying.Store(true)
	defer func() {
		l.lastRetry.Store(int64(l.elapsed()))
		l.retrying.Store(false)
	}()
	keys := slices.Collect(maps.Keys(snap))
	failed, _ := l.invalidateWith(context.Background(), keys, nil, call)
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
	l.pending.remove(snap)
	l.reportPending()
	for range snap {
		l.count(EventInvalidationRetried)
	}
}
