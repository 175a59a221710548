package cache

import (
	"context"
	"time"
)

const (
	// retryQueueSize bounds the invalidations waiting for Redis.
	retryQueueSize = 4096
	// retryRounds bounds how often a batch of queued invalidations is tried
	// before it is dropped; with retryBackoff doubling up to retryMaxBackoff
	// that is about half a minute.
	retryRounds     = 10
	retryBackoff    = 50 * time.Millisecond
	retryMaxBackoff = 5 * time.Second
)

// enqueueInvalidation queues key for retryLoop; a full queue drops it.
func (l *Loader[T]) enqueueInvalidation(key string) {
	select {
	case l.retries <- key:
		l.count(EventInvalidationQueued)
	default:
		l.count(EventInvalidationDropped)
		l.s.logger.Error("cache: invalidation dropped: retry queue full; entry may stay stale until its TTL",
			"loader", l.name, "keys", 1)
	}
}

// retryLoop applies queued invalidations in batches, with exponential
// backoff while Redis keeps failing, until Close.
func (l *Loader[T]) retryLoop() {
	pending := make(map[string]struct{})
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	round := 0
	for {
		if len(pending) == 0 {
			select {
			case k := <-l.retries:
				pending[k] = struct{}{}
			case <-l.bg.done:
				return
			}
		}
		l.drainRetries(pending)
		keys := make([]string, 0, len(pending))
		for k := range pending {
			keys = append(keys, k)
		}
		if err := l.invalidate(context.Background(), keys); err == nil {
			for range keys {
				l.count(EventInvalidationRetried)
			}
			clear(pending)
			round = 0
			continue
		}
		round++
		if round >= retryRounds {
			l.drop(pending, "retries used up")
			round = 0
			continue
		}
		timer.Reset(min(retryBackoff<<round, retryMaxBackoff))
		select {
		case <-timer.C:
		case <-l.bg.done:
			// One last try for what is queued, then give up.
			l.drainRetries(pending)
			keys = keys[:0]
			for k := range pending {
				keys = append(keys, k)
			}
			if err := l.invalidate(context.Background(), keys); err != nil {
				l.drop(pending, "loader closed")
			} else {
				for range keys {
					l.count(EventInvalidationRetried)
				}
			}
			return
		}
	}
}

// drainRetries moves what is queued into pending, up to the queue's size.
func (l *Loader[T]) drainRetries(pending map[string]struct{}) {
	for len(pending) < retryQueueSize {
		select {
		case k := <-l.retries:
			pending[k] = struct{}{}
		default:
			return
		}
	}
}

func (l *Loader[T]) drop(pending map[string]struct{}, why string) {
	for range pending {
		l.count(EventInvalidationDropped)
	}
	l.s.logger.Error("cache: invalidations dropped; entries may stay stale until their TTL",
		"loader", l.name, "keys", len(pending), "reason", why)
	clear(pending)
}
