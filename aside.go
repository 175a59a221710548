package cache

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
)

// maxAcquireRounds bounds how often one flight asks for a lease (after a
// lapsed lease or a corrupt entry) before it loads without filling.
const maxAcquireRounds = 8

// get is the read path: one HMGET, then on a miss one shared flight.
func (l *Loader[T]) get(ctx context.Context, key string) (T, error) {
	var zero T
	rkey := l.Key(key)
	// Taken before the read is sent: whatever this process issues later
	// reflects every invalidation completed before this Get began.
	c := caller{seq: l.seq.Add(1)}
	force := false
	e, err := l.read(ctx, rkey)
	switch {
	case err == nil && e.Usable():
		if e.Negative() {
			l.count(EventNegativeHit)
			return zero, ErrNotFound
		}
		v, err := l.decode(e.Payload)
		if err == nil {
			l.count(EventHit)
			return v, nil
		}
		l.corrupt(rkey, err)
		force = true
		c.gen = e.Generation
	case err == nil:
		c.gen = e.Generation // 0 when the key is absent: unknown
	case errors.Is(err, entry.ErrCorrupt):
		l.corrupt(rkey, err)
		force = true
	case ctx.Err() != nil:
		return zero, ctx.Err()
	default:
		l.count(EventRedisError)
	}
	l.count(EventMiss)

	res, shared, err := l.flights.do(ctx, key, c, l.bg.Go, func(f *flight[T]) result[T] {
		return l.fetch(context.WithoutCancel(ctx), key, rkey, force, f)
	})
	if err != nil {
		return zero, err
	}
	if shared {
		l.count(EventCoalesced)
	}
	return res.val, res.err
}

// read fetches and decodes key's entry in one round trip.
func (l *Loader[T]) read(ctx context.Context, rkey string) (entry.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	vals, err := l.rdb.HMGet(ctx, rkey, entry.Fields...).Result()
	if err != nil {
		if isWrongType(err) {
			return entry.Entry{}, fmt.Errorf("%w: %v", entry.ErrCorrupt, err)
		}
		return entry.Entry{}, err
	}
	return entry.Decode(vals)
}

func (l *Loader[T]) decode(payload string) (T, error) {
	var v T
	err := l.s.codec.Unmarshal([]byte(payload), &v)
	return v, err
}

func (l *Loader[T]) corrupt(rkey string, err error) {
	l.count(EventCorruptEntry)
	l.s.logger.Warn("cache: corrupt entry treated as a miss", "loader", l.name, "key", rkey, "err", err)
}

// fetch is the body of one flight: take the lease and load and fill, or
// wait for the lease holder's fill, or load without filling when Redis
// cannot help. ctx is detached from the callers' cancellation.
func (l *Loader[T]) fetch(ctx context.Context, key, rkey string, force bool, f *flight[T]) result[T] {
	waited := false
	for range maxAcquireRounds {
		seq := l.seq.Add(1)
		token := newToken()
		a, err := l.acquire(ctx, rkey, token, force)
		if err != nil {
			l.count(EventRedisError)
			return l.loadOnly(ctx, key)
		}
		switch a.status {
		case script.Granted:
			f.grantGen.Store(a.gen)
			return l.loadAndFill(ctx, key, rkey, token, seq, a.gen)
		case script.Usable:
			if a.flags&entry.FlagNegative != 0 {
				return result[T]{err: ErrNotFound, seq: seq, gen: a.gen}
			}
			v, err := l.decode(a.payload)
			if err == nil {
				return result[T]{val: v, seq: seq, gen: a.gen}
			}
			l.corrupt(rkey, err)
			force = true
		case script.Held:
			if !waited {
				l.count(EventLeaseWait)
				waited = true
			}
			if r, ok := l.awaitLease(ctx, rkey, a); ok {
				return r
			} else if r.err != nil {
				// The wait ran out with the holder still loading: load
				// without filling rather than keep the callers waiting.
				return l.loadOnly(ctx, key)
			}
			// The lease lapsed or was released: ask again.
		}
	}
	return l.loadOnly(ctx, key)
}

// errWaitExpired marks an awaitLease that gave up on a live lease.
var errWaitExpired = errors.New("lease wait expired")

// awaitLease polls key's entry, with jittered backoff, until the lease
// holder fills it (ok), the lease lapses or changes hands (!ok, r.err nil:
// ask for the lease again), or the wait runs out (!ok, r.err set). The wait
// is a few times the last load's duration when that is known, and never
// past the lease's deadline.
func (l *Loader[T]) awaitLease(ctx context.Context, rkey string, a acquireReply) (r result[T], ok bool) {
	start := time.Now()
	leaseEnd := start.Add(a.remaining)
	deadline := leaseEnd
	if a.delta > 0 {
		if d := start.Add(max(4*a.delta, minLeaseWait)); d.Before(deadline) {
			deadline = d
		}
	}
	backoff := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		now := time.Now()
		if !now.Before(deadline) {
			if !now.Before(leaseEnd) {
				return r, false
			}
			return result[T]{err: errWaitExpired}, false
		}
		timer.Reset(min(jittered(backoff, 0.5), deadline.Sub(now)))
		<-timer.C
		backoff = min(backoff*3/2, maxPollInterval)

		seq := l.seq.Add(1)
		e, err := l.read(ctx, rkey)
		if err != nil {
			if !errors.Is(err, entry.ErrCorrupt) {
				l.count(EventRedisError)
			}
			return result[T]{err: err}, false
		}
		if e.Usable() {
			if e.Negative() {
				return result[T]{err: ErrNotFound, seq: seq, gen: e.Generation}, true
			}
			if v, err := l.decode(e.Payload); err == nil {
				return result[T]{val: v, seq: seq, gen: e.Generation}, true
			}
			return r, false // corrupt: acquire replaces it
		}
		if e.LeaseOwner != a.owner {
			return r, false // lapsed, released, voided or taken over
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

// loadAndFill loads under a granted lease and stores the result. A failed
// load releases the lease so that waiters stop waiting; it is never cached.
func (l *Loader[T]) loadAndFill(ctx context.Context, key, rkey, token string, seq uint64, gen int64) result[T] {
	start := time.Now()
	v, err := l.callLoad(ctx, key)
	delta := time.Since(start)
	res := result[T]{val: v, err: err, seq: seq, gen: gen}
	switch {
	case errors.Is(err, ErrNotFound) && !l.s.noNegative:
		l.fill(ctx, rkey, token, nil, 0, true, l.s.negativeEntryTTL(), delta)
	case err != nil:
		l.release(ctx, rkey, token)
	default:
		payload, version, err := l.encode(v)
		if err != nil {
			l.release(ctx, rkey, token)
			break
		}
		l.fill(ctx, rkey, token, payload, version, false, l.s.valueTTL(), delta)
	}
	return res
}

// callLoad runs the LoadFunc bounded by LoadTimeout, turning a panic into
// an error and "no rows" into ErrNotFound, and records it.
func (l *Loader[T]) callLoad(ctx context.Context, key string) (v T, err error) {
	ctx, cancel := context.WithTimeout(ctx, l.s.loadTimeout)
	defer cancel()
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = newPanicError(p)
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound), errors.Is(err, sql.ErrNoRows):
			err = ErrNotFound
		default:
			l.stats.loadErrors.Add(1)
			err = fmt.Errorf("cache: load %s %q: %w", l.name, key, err)
		}
		l.stats.loads.Add(1)
		l.s.recorder.ObserveLoad(l.name, time.Since(start), err)
	}()
	return l.load(ctx, key)
}

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

// newToken returns a random lease token, unique across processes.
func newToken() string {
	var b [32]byte
	out := strconv.AppendUint(b[:0], rand.Uint64(), 36)
	out = append(out, '.')
	out = strconv.AppendUint(out, rand.Uint64(), 36)
	return string(out)
}
