package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
	"unsafe"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/local"
	"github.com/f4df6ac3/cache/internal/script"
)

// maxAcquireRounds bounds how often one flight asks for a lease (after a
// lapsed lease or a corrupt entry) before it loads without filling.
const maxAcquireRounds = 8

// maxOlderRereads bounds how often one flight loads again because its fill
// was refused as older than the stored version.
const maxOlderRereads = 1

// get is the read path: one GETRANGE, then on a miss one shared flight. hit
// reports an answer from Redis (a value or a negative entry).
func (l *Loader[T]) get(ctx context.Context, key string) (_ T, hit bool, _ error) {
	return l.getFrom(ctx, key, nil)
}

// preRead is key's entry as read for a Get before the Get was called (by
// GetMany's pipeline), by a read sent after seq was taken.
type preRead struct {
	seq uint64
	e   entry.Entry
}

// getFrom is get, starting from pre instead of a read of its own when pre
// is not nil: the Get is then as old as pre's seq.
func (l *Loader[T]) getFrom(ctx context.Context, key string, pre *preRead) (_ T, hit bool, _ error) {
	var zero T
	rkey := l.Key(key)
	// The Redis budget of this Get: its read, its flight's lease request
	// and fill together (see Options.RedisTimeout).
	budget := redisBudget{left: l.s.redisTimeout}
	// Taken before the read is sent: whatever this process issues later
	// reflects every invalidation completed before this Get began.
	c := caller{seq: l.seq.Add(1)}
	if pre != nil {
		c.seq = pre.seq
	}

	if l.bypassing(key) {
		l.countIn(ctx, EventBypass)
		res, _, err := l.bypassFlights.do(ctx, key, c, l.bg.Go, func(*flight[T]) (result[T], func()) {
			return l.loadOnly(context.WithoutCancel(ctx), key), nil
		})
		if err != nil {
			return zero, false, err
		}
		return res.val, false, res.err
	}

	var tk local.Ticket // refused unless taken below, before the read
	if l.tier != nil && pre == nil {
		if v, ok := l.localGet(ctx, &budget, rkey); ok {
			l.countIn(ctx, EventLocalHit)
			return v, true, nil
		}
		tk = l.tier.stream.Begin()
	}

	mode := script.ModeMiss
	var stale *T // a value this Get may answer with if the load fails
	var (
		e         entry.Entry
		coalesced *coalescedRead
		err       error
	)
	if pre != nil {
		e = pre.e
	} else {
		e, coalesced, err = l.read(ctx, &budget, rkey)
	}
	switch {
	case err == nil && (e.Usable() || e.Invalidated() && e.HasPayload):
		if e.Negative() {
			l.countIn(ctx, EventNegativeHit)
			return zero, true, ErrNotFound
		}
		c.gen = e.Generation
		v, err := l.decodeShared(coalesced, e.Payload)
		if err != nil {
			l.corrupt(rkey, err)
			mode = script.ModeReplace
			break
		}
		now := l.clock.serverNow()
		if !e.Invalidated() && e.FreshAt(now) {
			if l.refreshDue(&e, now) {
				l.refresh(ctx, key, rkey, e.SoftExpiry)
			}
			l.sampleHit(ctx, key, rkey)
			if l.tier != nil {
				l.localFill(ctx, tk, rkey, v, &e, now)
			}
			l.countIn(ctx, EventHit)
			return v, true, nil
		}
		// Expired or invalidated, and kept for stale serving.
		if now-e.SoftExpiry <= l.s.maxStale.Milliseconds() {
			if l.s.swr {
				l.refresh(ctx, key, rkey, e.SoftExpiry)
				l.countIn(ctx, EventStale)
				return v, true, nil
			}
			stale = new(T) // copied, so that v stays on the stack of hits
			*stale = v
		}
	case err == nil:
		c.gen = e.Generation // 0 when the key is absent: unknown
	case errors.Is(err, entry.ErrCorrupt):
		l.corrupt(rkey, err)
		mode = script.ModeReplace
	case ctx.Err() != nil:
		return zero, false, ctx.Err()
	}

	left := budget // a copy: budget's address was taken, left's is not
	res, shared, err := l.flights.do(ctx, key, c, l.bg.Go, func(f *flight[T]) (result[T], func()) {
		return l.fetch(context.WithoutCancel(ctx), key, rkey, mode, left, f)
	})
	if err != nil {
		return zero, false, err
	}
	if shared {
		l.countIn(ctx, EventCoalesced)
	}
	if res.err != nil && stale != nil && l.s.staleIfError && !errors.Is(res.err, ErrNotFound) {
		l.countIn(ctx, EventStale)
		return *stale, false, nil
	}
	l.countIn(ctx, EventMiss)
	return res.val, false, res.err
}

func (l *Loader[T]) decode(payload string) (T, error) {
	var v T
	var data []byte
	if _, ok := l.s.codec.(JSON); ok {
		// encoding/json neither modifies nor keeps its input: it may read
		// the reply's memory as it is (as go-redis's StringCmd.Bytes does).
		data = unsafe.Slice(unsafe.StringData(payload), len(payload))
	} else {
		data = []byte(payload) // a Codec may keep or change what it is given
	}
	err := l.s.codec.Unmarshal(data, &v)
	return v, err
}

func (l *Loader[T]) corrupt(rkey string, err error) {
	l.count(EventCorruptEntry)
	l.s.logger.Warn("cache: corrupt entry treated as a miss", "loader", l.name, "key", rkey, "err", err)
}

// refreshDue decides early refresh (XFetch): with r left before the soft
// expiry and a last load of delta, refresh with probability
// exp(-r / (beta × delta)).
func (l *Loader[T]) refreshDue(e *entry.Entry, now int64) bool {
	if l.s.noEarly || e.Delta <= 0 || e.SoftExpiry == 0 {
		return false
	}
	remaining := float64(e.SoftExpiry - now)
	scale := l.s.beta * float64(e.Delta)
	if remaining > 40*scale { // probability below e^-40: skip the math
		return false
	}
	return rand.Float64() < math.Exp(-remaining/scale)
}

// refresh loads key in the background under a lease and fills it, while
// Gets go on being answered from the current entry, whose soft expiry the
// caller read as soft. At most one refresh per key runs in this process;
// across processes the lease decides, and an entry refilled since it was
// read is not refreshed again. The load gets ctx's values, not its
// cancellation.
func (l *Loader[T]) refresh(ctx context.Context, key, rkey string, soft int64) {
	if _, running := l.refreshing.LoadOrStore(key, struct{}{}); running {
		return
	}
	l.countIn(ctx, EventRefresh)
	ctx = context.WithoutCancel(ctx)
	l.bg.Go(func() {
		defer l.refreshing.Delete(key)
		// Linked to the Get that started it, which does not wait for it.
		ctx, sp := l.startOp(ctx, OpRefresh, key, 1)
		var err error
		defer func() { endOp(sp, err) }()
		seq := l.seq.Add(1)
		token := script.NewToken()
		b := redisBudget{left: l.s.redisTimeout}
		a, settled, err := l.acquire(ctx, &b, rkey, token, script.ModeRefresh, soft)
		if err != nil && !errors.Is(err, ErrRedisUnavailable) && !errors.Is(err, errLateAcquire) {
			// The request may have run and granted the lease: release it
			// once it can no longer be granted.
			l.storeSettled(ctx, store{call: script.Release(rkey, token, l.wakeChannel()), tentative: true}, settled)
			return
		}
		if err != nil || a.Status != script.Granted {
			return // Redis is failing, or the entry is being or was refreshed
		}
		b = redisBudget{left: l.s.redisTimeout}
		r, store, _ := l.loadAndFill(ctx, key, rkey, token, seq, a, &b)
		if store != nil {
			store()
		}
		err = r.err
	})
}

// fetch is the body of one flight: take the lease, load and fill, or wait
// for the lease holder's fill, or load without filling when Redis cannot
// help. ctx is detached from the callers'
// cancellation; its Redis calls spend what is left of the starting Get's
// Redis budget, but for waits on another caller's lease, after which each
// call has a budget of its own.
func (l *Loader[T]) fetch(ctx context.Context, key, rkey string, mode script.Mode, budget redisBudget, f *flight[T]) (result[T], func()) {
	waited := false
	rereads := 0
	for round := range maxAcquireRounds {
		seq := l.seq.Add(1)
		token := script.NewToken()
		a, settled, err := l.acquire(ctx, &budget, rkey, token, mode, 0)
		if errors.Is(err, ErrRedisUnavailable) || errors.Is(err, errLateAcquire) {
			return l.loadOnly(ctx, key), nil
		}
		if err != nil {
			// The request may have reached Redis and the lease may be
			// ours: try a fill with its token after answering, once the
			// request can no longer be granted, so that other processes
			// do not wait out an orphaned lease. If the lease is not ours
			// the fill is refused, harmlessly.
			start := time.Now()
			res := l.loadOnly(ctx, key)
			st := l.storeCall(rkey, token, res.val, res.err, time.Since(start), true)
			return res, func() { l.storeSettled(ctx, st, settled) }
		}
		switch a.Status {
		case script.Granted:
			f.grantGen.Store(a.Gen)
			if r, store, ok := l.migrateFrom(ctx, key, rkey, token, seq, a, &budget); ok {
				return r, store
			}
			r, after, older := l.loadAndFill(ctx, key, rkey, token, seq, a, &budget)
			if older && rereads < maxOlderRereads && round < maxAcquireRounds-1 {
				rereads++
				// Redis holds a newer version than the row just read (a
				// version floor, or a newer write): the row is older
				// than a write that completed, perhaps before a caller of
				// this flight began. Read it again rather than hand it
				// out (once: if the database still says so, it is what
				// the database says — or versions went backwards, and
				// reading again would only multiply the loads).
				continue
			}
			return r, after
		case script.Usable:
			if r, ok := l.usable(rkey, seq, a); ok {
				return r, nil
			}
			mode = script.ModeReplace
		case script.Held:
			if !waited {
				l.countIn(ctx, EventLeaseWait)
				waited = true
			}
			r, outcome := l.awaitLease(ctx, rkey, a)
			budget = redisBudget{left: l.s.redisTimeout}
			switch outcome {
			case filled:
				return r, nil
			case corrupt:
				mode = script.ModeReplace
			case gaveUp:
				// The holder is still loading after longer than is worth
				// waiting, or Redis failed: load without filling.
				return l.loadOnly(ctx, key), nil
			}
			// The lease lapsed or changed hands: ask again.
		}
	}
	return l.loadOnly(ctx, key), nil
}

// How a wait on another caller's lease ended.
type waitOutcome int

const (
	filled  waitOutcome = iota // the entry is usable: r holds it
	lapsed                     // the lease lapsed, was released or voided: ask again
	corrupt                    // the entry is corrupt: ask again, replacing it
	gaveUp                     // the wait ran out, or Redis failed
)

// awaitLease polls key's entry, with jittered backoff and at once when the
// fill or release is published (see wakeups), until the lease holder fills
// it, the lease lapses or changes hands, or the wait runs out.
// The wait is a few times the last load's duration when that is known, and
// never past the lease's deadline. Each poll is bounded by RedisTimeout.
func (l *Loader[T]) awaitLease(ctx context.Context, rkey string, a script.AcquireReply) (result[T], waitOutcome) {
	start := time.Now()
	leaseEnd := start.Add(a.Remaining)
	deadline := leaseEnd
	if a.Delta > 0 {
		if d := start.Add(max(4*a.Delta, minLeaseWait)); d.Before(deadline) {
			deadline = d
		}
	}
	backoff := time.Millisecond
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	woken, stop := l.watch(rkey)
	defer func() { stop() }()
	for {
		now := time.Now()
		if !now.Before(deadline) {
			if !now.Before(leaseEnd) {
				return result[T]{}, lapsed
			}
			return result[T]{}, gaveUp
		}
		timer.Reset(min(jittered(backoff, 0.5), deadline.Sub(now)))
		select {
		case <-timer.C:
		case <-woken:
			// Filled or released: read it now, and watch for the next.
			stop()
			woken, stop = l.watch(rkey)
		case <-l.bg.done:
			return result[T]{}, gaveUp // Close does not wait out a lease
		}
		backoff = min(backoff*3/2, maxPollInterval)

		seq := l.seq.Add(1)
		e, coalesced, err := l.read(ctx, &redisBudget{left: l.s.redisTimeout}, rkey)
		switch {
		case errors.Is(err, entry.ErrCorrupt):
			l.corrupt(rkey, err)
			return result[T]{}, corrupt
		case err != nil:
			return result[T]{}, gaveUp
		case e.Usable() && !e.FreshAt(l.clock.serverNow()):
			// The old value, still there past its expiry (kept for stale
			// serving or for the lease): not the fill we wait for.
			if e.LeaseOwner != a.Owner {
				return result[T]{}, lapsed
			}
		case e.Usable() && e.Negative():
			return result[T]{err: ErrNotFound, seq: seq, gen: e.Generation}, filled
		case e.Usable():
			if v, err := l.decodeShared(coalesced, e.Payload); err == nil {
				return result[T]{val: v, seq: seq, gen: e.Generation}, filled
			}
			l.corrupt(rkey, err)
			return result[T]{}, corrupt
		case e.LeaseOwner != a.Owner:
			return result[T]{}, lapsed
		}
	}
}

const (
	minLeaseWait    = 20 * time.Millisecond
	maxPollInterval = 16 * time.Millisecond
)

// loadOnly loads without touching Redis: Redis failed, or another process
// holds the lease for longer than is worth waiting.
func (l *Loader[T]) loadOnly(ctx context.Context, key string) result[T] {
	seq := l.seq.Add(1)
	v, err := l.callLoad(ctx, key)
	return result[T]{val: v, err: err, seq: seq}
}

// loadAndFill loads under a granted lease and stores the result (or, for a
// failed load, releases the lease so that waiters stop waiting; a failed
// load is never cached). The store spends what is left of b before the
// result is returned, so that the caller's next Get finds it; when b is
// spent, or the store failed, it is returned as a step to take after the
// result is published instead, with a budget of its own, and nobody waits
// for it.
//
// older reports that the fill was refused because Redis holds a newer
// version than the value loaded.
func (l *Loader[T]) loadAndFill(ctx context.Context, key, rkey, token string, seq uint64, a script.AcquireReply, b *redisBudget) (_ result[T], after func(), older bool) {
	start := time.Now()
	v, err := l.callLoad(ctx, key)
	res := result[T]{val: v, err: err, seq: seq, gen: a.Gen}
	st := l.storeCall(rkey, token, v, err, time.Since(start), false)
	if b.left >= minStoreBudget {
		if ok, n := l.runStore(ctx, b, st); ok {
			return res, nil, n == script.OlderValue
		}
	}
	return res, func() { l.storeAfter(ctx, st) }, false
}

// storeNowOrLater runs st within what is left of b, before the result is
// returned, so that the caller's next Get finds it; when b is spent, or the
// store failed on the client (it may not have reached Redis), it returns
// st as a step to run after answering, with a budget of its own, so that
// no lease is left for others to wait out.
func (l *Loader[T]) storeNowOrLater(ctx context.Context, st store, b *redisBudget) func() {
	if b.left >= minStoreBudget {
		if ok, _ := l.runStore(ctx, b, st); ok {
			return nil
		}
	}
	return func() { l.storeAfter(ctx, st) }
}

// usable answers from an entry that acquire found usable (filled since it
// was read); ok is false when its payload is corrupt (counted: the caller
// asks again, replacing it).
func (l *Loader[T]) usable(rkey string, seq uint64, a script.AcquireReply) (_ result[T], ok bool) {
	if a.Flags&entry.FlagNegative != 0 {
		return result[T]{err: ErrNotFound, seq: seq, gen: a.Gen}, true
	}
	if len(a.Payload) > l.s.maxValueBytes {
		l.corrupt(rkey, fmt.Errorf("%w: %d bytes, limit %d", entry.ErrTooLarge, len(a.Payload), l.s.maxValueBytes))
		return result[T]{}, false
	}
	v, err := l.decode(a.Payload)
	if err != nil {
		l.corrupt(rkey, err)
		return result[T]{}, false
	}
	return result[T]{val: v, seq: seq, gen: a.Gen}, true
}

// minStoreBudget is the least budget worth spending on a fill before the
// result is returned.
const minStoreBudget = time.Millisecond

// encode returns v's payload and version, or an error (counted and logged)
// when v cannot be cached.
func (l *Loader[T]) encode(v T) ([]byte, int64, error) {
	version, err := versionOf(v)
	if err != nil {
		l.count(EventEncodeError)
		return nil, 0, err
	}
	payload, err := l.s.codec.Marshal(v)
	if err != nil {
		l.count(EventEncodeError)
		l.s.logger.Warn("cache: value not cached: encode failed", "loader", l.name, "err", err)
		return nil, 0, fmt.Errorf("cache: encode: %w", err)
	}
	if len(payload) > l.s.maxValueBytes {
		l.count(EventOversize)
		return nil, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(payload), l.s.maxValueBytes)
	}
	return payload, version, nil
}
