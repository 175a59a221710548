package cache

import (
	"context"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
)

// migrateFrom answers a miss from the entry in the previous key format
// (Options.PreviousKeyPrefix), under the lease just granted on the new one:
// a fresh value there is converted (Options.Migrate), filled into the new
// entry with the previous entry's remaining TTL, and returned. It declines
// (false) when no previous format is set, when the new entry is a
// tombstone (an invalidation the previous entry may predate), or when the
// previous entry is missing, expired, negative or unusable; the caller then
// loads from the database. Like loadAndFill, it may return the fill as a
// step to take after answering.
func (l *Loader[T]) migrateFrom(ctx context.Context, key, rkey, token string, seq uint64, a acquireReply, b *redisBudget) (result[T], func(), bool) {
	if l.s.prevPrefix == "" || a.flags&entry.FlagInvalidated != 0 {
		return result[T]{}, nil, false
	}
	prev := l.s.prevPrefix + key
	var (
		vals []any
		pttl time.Duration
	)
	err := l.redisCallKey(ctx, b, prev, func(ctx context.Context) error {
		pipe := l.rdb.Pipeline()
		hm := pipe.HMGet(ctx, prev, entry.Fields...)
		pt := pipe.PTTL(ctx, prev)
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		vals, pttl = hm.Val(), pt.Val()
		return nil
	})
	if err != nil || pttl <= 0 {
		return result[T]{}, nil, false
	}
	e, err := entry.Decode(vals)
	now := l.clock.serverNow()
	if err != nil || !e.Usable() || e.Negative() || !e.FreshAt(now) {
		return result[T]{}, nil, false
	}
	payload := []byte(e.Payload)
	if l.s.migrate != nil {
		if payload, err = l.s.migrate(payload); err != nil {
			return result[T]{}, nil, false
		}
	}
	v, err := l.decode(string(payload))
	if err != nil || len(payload) > l.s.maxValueBytes {
		return result[T]{}, nil, false
	}
	ttl := pttl
	if e.SoftExpiry > 0 {
		ttl = time.Duration(e.SoftExpiry-now) * time.Millisecond
	}
	store := func(b *redisBudget) bool {
		return l.fill(ctx, b, rkey, token, payload, e.Version, false, ttl+l.s.maxStale, ttl,
			time.Duration(e.Delta)*time.Millisecond, false)
	}
	l.count(EventMigrated)
	res := result[T]{val: v, seq: seq, gen: a.gen}
	if b.left >= minStoreBudget && store(b) {
		return res, nil, true
	}
	// As in loadAndFill: store after answering, so that no lease is left
	// for others to wait out.
	return res, func() { store(&redisBudget{left: l.s.redisTimeout}) }, true
}
