package cdc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/f4df6ac3/cache"
)

// batch holds the invalidations read but not yet applied, deduplicated:
// one floor per key and target, the highest seen.
type batch struct {
	byTarget []map[string]int64 // by target index (Relay.targets)
	keys     int                // distinct (target, key) pairs held
	since    time.Time          // when the first of them was added
}

func newBatch(targets int) *batch {
	b := &batch{byTarget: make([]map[string]int64, targets)}
	for i := range b.byTarget {
		b.byTarget[i] = map[string]int64{}
	}
	return b
}

// add records that key of target t changed, with floor (0: none).
func (b *batch) add(t int, key string, floor int64) {
	m := b.byTarget[t]
	old, ok := m[key]
	if !ok {
		b.keys++
		if b.keys == 1 {
			b.since = time.Now()
		}
	}
	if !ok || floor > old {
		m[key] = floor
	}
}

func (b *batch) empty() bool { return b.keys == 0 }

func (b *batch) reset() {
	for _, m := range b.byTarget {
		clear(m)
	}
	b.keys = 0
}

// errClosedTarget stops the relay: a Target was closed, so no retry can
// succeed and skipping its invalidations would lose them.
var errClosedTarget = errors.New("cdc: a target is closed")

// apply invalidates every key of the batch, in calls of at most
// KeysPerCall keys, up to CallsInFlight of them at a time. A failed call
// is retried with backoff until it succeeds or ctx ends: the relay never
// moves its checkpoint past an unapplied invalidation, it waits (for Redis
// to come back, for the breaker to close).
func (r *Relay) apply(ctx context.Context, b *batch) error {
	type unit struct {
		t   Target
		kvs []cache.KeyVersion
	}
	var units []unit
	for i, keys := range b.byTarget {
		if len(keys) == 0 {
			continue
		}
		kvs := make([]cache.KeyVersion, 0, len(keys))
		for k, v := range keys {
			kvs = append(kvs, cache.KeyVersion{Key: k, Version: v})
		}
		for len(kvs) > 0 {
			n := min(len(kvs), r.s.keysPerCall)
			units = append(units, unit{r.targets[i], kvs[:n:n]})
			kvs = kvs[n:]
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, r.s.callsInFlight)
	var wg sync.WaitGroup
	for _, u := range units {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := r.applyTarget(ctx, u.t, u.kvs); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if r.s.reinvalidate > 0 {
		for _, u := range units {
			r.later(u.t, u.kvs)
		}
	}
	b.reset()
	return nil
}

// repeat is a second invalidation of keys without a version floor, due
// at a time.
type repeat struct {
	due time.Time
	t   Target
	kvs []cache.KeyVersion
}

// later queues the keys of kvs without a floor for a second invalidation
// after Options.Reinvalidate. The queue is bounded: when it is full the
// repeat is dropped (and counted); the first invalidation was applied.
func (r *Relay) later(t Target, kvs []cache.KeyVersion) {
	var unversioned []cache.KeyVersion
	for _, kv := range kvs {
		if kv.Version == 0 {
			unversioned = append(unversioned, kv)
		}
	}
	if len(unversioned) == 0 {
		return
	}
	select {
	case r.repeats <- repeat{time.Now().Add(r.s.reinvalidate), t, unversioned}:
	default:
		r.stats.repeatsDropped.Add(uint64(len(unversioned)))
	}
}

// reinvalidate applies the queued repeats when due, until ctx ends.
func (r *Relay) reinvalidate(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case rp := <-r.repeats:
			if err := sleep(ctx, time.Until(rp.due)); err != nil {
				return
			}
			if r.applyTarget(ctx, rp.t, rp.kvs) == nil {
				r.stats.repeats.Add(uint64(len(rp.kvs)))
			}
		}
	}
}

// applyTarget invalidates kvs in t. A failed call is retried after a
// backoff with half the keys (down to one): a call too large for the
// Loader's RedisTimeout still goes through.
func (r *Relay) applyTarget(ctx context.Context, t Target, kvs []cache.KeyVersion) error {
	wait := firstApplyWait
	failures := 0
	size := len(kvs)
	for len(kvs) > 0 {
		n := min(len(kvs), size)
		c, cancel := context.WithTimeout(ctx, r.s.applyTimeout)
		err := t.InvalidateVersions(c, kvs[:n]...)
		cancel()
		if err == nil {
			r.stats.invalidations.Add(uint64(n))
			r.stats.batches.Add(1)
			kvs = kvs[n:]
			wait, failures = firstApplyWait, 0
			continue
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if errors.Is(err, cache.ErrClosed) {
			return fmt.Errorf("%w: %s: %v", errClosedTarget, t.Name(), err)
		}
		r.stats.applyErrors.Add(1)
		failures++
		if failures == 1 || failures%20 == 0 {
			r.s.logger.Warn("cdc: invalidation failed; retrying (the checkpoint waits)",
				"relay", r.s.name, "target", t.Name(), "keys", n, "attempt", failures, "error", err)
		}
		size = max(n/2, 1)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, maxApplyWait, r.s.maxBackoff)
	}
	return nil
}

// The waits between retries of a failed invalidation. They stay short: a
// retry is cheap (while the Loader's breaker is open it fails at once,
// without touching Redis), and once the breaker closes Gets read Redis
// again, where the entry stays stale until the retry lands.
const (
	firstApplyWait = 10 * time.Millisecond
	maxApplyWait   = 100 * time.Millisecond
)

// backoff is an exponential, jittered wait between attempts.
type backoff struct {
	first, max, next time.Duration
}

func newBackoff(first, max time.Duration) *backoff {
	return &backoff{first: first, max: max, next: first}
}

// wait sleeps the next backoff (jittered ±25%) and doubles it.
func (b *backoff) wait(ctx context.Context) error {
	d := b.next
	d += time.Duration((rand.Float64() - 0.5) * 0.5 * float64(d))
	b.next = min(2*b.next, b.max)
	return sleep(ctx, d)
}

func (b *backoff) reset() { b.next = b.first }

// sleep waits d or until ctx ends (then returns its cause).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
