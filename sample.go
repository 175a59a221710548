package cache

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
)

// maxSamplesInFlight bounds the consistency checks waiting for their delay.
const maxSamplesInFlight = 1024

// sampleHit decides whether a hit is checked against the database later
// (Options.SampleRate) and schedules the check; ctx is the hit's.
func (l *Loader[T]) sampleHit(ctx context.Context, key, rkey string) {
	if l.s.sampleRate <= 0 || rand.Float64() >= l.s.sampleRate {
		return
	}
	if l.samplesInFlight.Add(1) > maxSamplesInFlight {
		l.samplesInFlight.Add(-1)
		return
	}
	origin := l.traceOrigin(ctx) // for a Tracer to link the check to the hit
	l.bg.Go(func() {
		defer l.samplesInFlight.Add(-1)
		t := time.NewTimer(l.s.sampleDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.bg.done:
			return
		}
		l.checkSample(origin, key, rkey)
	})
}

// checkSample compares key's entry with the database. An entry that is gone,
// invalidated or changed while the row was read is not judged: only an
// entry that still differs from the database, SampleDelay after it was
// served, counts as an inconsistency. origin is the hit's context for a
// Tracer (nil without one).
func (l *Loader[T]) checkSample(origin context.Context, key, rkey string) {
	ctx := context.Background()
	if origin != nil {
		var sp Span
		ctx, sp = l.startOp(origin, OpSample, key, 1)
		defer endOp(sp, nil)
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.loadTimeout)
	defer cancel()
	read := func() (entry.Entry, bool) {
		var e entry.Entry
		err := l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, rkey, func(ctx context.Context) error {
			val, err := l.readEntry(ctx, l.rdb, rkey).Result()
			if err == nil {
				e, err = entry.Decode(val, l.s.maxValueBytes)
			}
			return err
		})
		return e, err == nil && e.Usable()
	}
	before, ok := read()
	if !ok {
		return
	}
	v, err := l.callLoad(ctx, key)
	notFound := isNotFound(err)
	if err != nil && !notFound {
		return
	}
	after, ok := read()
	if !ok || after.Generation != before.Generation || after.Payload != before.Payload {
		return // changed meanwhile: a write or a fill is at work
	}
	if !l.agrees(&after, v, notFound) {
		l.countIn(ctx, EventInconsistent)
		l.s.logger.Warn("cache: sampled entry differs from the database", "loader", l.name, "key", rkey)
	}
	l.countIn(ctx, EventSampled) // last: once it is counted, the verdict is too
}
