package cdc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/f4df6ac3/cache"
)

// batch holds the invalidations read but not yet applied, deduplicated:
// one floor per key and target, the highest seen.
type batch struct {
	byTarget []map[string]int64 // by target index (Relay.targets)
	keys     int       // distinct (target, key) pairs held
	since    time.Time // when the first of them was added
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

// apply invalidates every key of the batch, chunked by max keys per call.
// A failed call is retried with backoff until it succeeds or ctx ends:
// the relay never moves its checkpoint past an unapplied invalidation, it
// waits (for Redis to come back, for the breaker to close).
func (r *Relay) apply(ctx context.Context, b *batch) error {
	kvs := make([]cache.KeyVersion, 0, min(b.keys, r.s.maxBatch))
	for i, keys := range b.byTarget {
		t := r.targets[i]
		kvs = kvs[:0]
		for k, v := range keys {
			kvs = append(kvs, cache.KeyVersion{Key: k, Version: v})
			if len(kvs) == r.s.maxBatch {
				if err := r.applyOne(ctx, t, kvs); err != nil {
					return err
				}
				kvs = kvs[:0]
			}
		}
		if len(kvs) > 0 {
			if err := r.applyOne(ctx, t, kvs); err != nil {
				return err
			}
		}
	}
	b.reset()
	return nil
}

// applyOne is one InvalidateVersions call, retried until it succeeds.
func (r *Relay) applyOne(ctx context.Context, t Target, kvs []cache.KeyVersion) error {
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, cancel := context.WithTimeout(ctx, r.s.applyTimeout)
		err := t.InvalidateVersions(c, kvs...)
		cancel()
		if err == nil {
			r.stats.invalidations.Add(uint64(len(kvs)))
			r.stats.batches.Add(1)
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if errors.Is(err, cache.ErrClosed) {
			return fmt.Errorf("%w: %s: %v", errClosedTarget, t.Name(), err)
		}
		r.stats.applyErrors.Add(1)
		if attempt == 1 || attempt%20 == 0 {
			r.s.logger.Warn("cdc: invalidation failed; retrying (the checkpoint waits)",
				"relay", r.s.name, "target", t.Name(), "keys", len(kvs), "attempt", attempt, "error", err)
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, r.s.maxBackoff)
	}
}

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
