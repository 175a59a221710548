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
	// to retryMaxBackoff, and at once when the circuit breaker closes.
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
	l.wakeRetrier()
}

func (l *Loader[T]) wakeRetrier() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// retryLoop applies queued invalidations in batches, with exponential
// backoff while Redis keeps failing and at once when the breaker closes,
// until Close; then it gives them one last try.
func (l *Loader[T]) retryLoop() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	backoff := retryBackoff
	for {
		select {
		case <-l.wake:
		case <-timer.C:
		case <-l.bg.done:
			l.applyPending()
			if snap := l.pending.snapshot(); len(snap) > 0 {
				for range snap {
					l.count(EventInvalidationDropped)
				}
				l.s.logger.Error("cache: invalidations dropped on Close; entries may stay stale until their TTL",
					"loader", l.name, "keys", len(snap))
				l.pending.remove(snap)
			}
			return
		}
		if l.applyPending() {
			backoff = retryBackoff
			continue
		}
		timer.Reset(backoff)
		backoff = min(2*backoff, retryMaxBackoff)
	}
}

// applyPending invalidates the queued keys and reports whether none is left.
func (l *Loader[T]) applyPending() bool {
	snap := l.pending.snapshot()
	if len(snap) == 0 {
		return true
	}
	keys := slices.Collect(maps.Keys(snap))
	failed, _ := l.invalidate(context.Background(), keys)
	for _, k := range failed {
		delete(snap, k)
	}
	l.pending.remove(snap)
	for range snap {
		l.count(EventInvalidationRetried)
	}
	return len(failed) == 0
}
