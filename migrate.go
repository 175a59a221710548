package cache

import (
	"context"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
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
func (l *Loader[T]) migrateFrom(ctx context.Context, key, rkey, token string, seq uint64, a script.AcquireReply, b *redisBudget) (result[T], func(), bool) {
	if l.s.prevPrefix == "" || a.Flags&entry.FlagInvalidated != 0 {
		return result[T]{}, nil, false
	}
	prev := l.s.prevPrefix + key
	var (
		e    entry.Entry
		pttl time.Duration
	)
	err := l.redisCallKey(ctx, b, prev, func(ctx context.Context) (err error) {
		e, pttl, err = l.readPrevious(ctx, prev)
		return err
	})
	now := l.clock.serverNow()
	if err != nil || pttl <= 0 || !e.Usable() || e.Negative() || !e.FreshAt(now) {
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
	st := store{fill: true, call: script.FillCall(rkey, script.Fill{
		Token: token, Payload: payload, Version: e.Version, KeyTTL: ttl + l.s.maxStale, SoftTTL: ttl,
		Delta: time.Duration(e.Delta) * time.Millisecond, Channel: l.wakeChannel(),
	})}
	l.countIn(ctx, EventMigrated)
	return result[T]{val: v, seq: seq, gen: a.Gen}, l.storeNowOrLater(ctx, st, b), true
}

// readPrevious reads the entry at prev, in the previous key format, and
// its remaining life: an entry of this format, or a format-1 hash written
// by the library's releases before it (so that an upgrade migrates the
// entries the old release cached, and neither release treats the other's
// entries as corrupt: they live under different keys).
func (l *Loader[T]) readPrevious(ctx context.Context, prev string) (entry.Entry, time.Duration, error) {
	pipe := l.rdb.Pipeline()
	val := l.readEntry(ctx, pipe, prev)
	pt := pipe.PTTL(ctx, prev)
	if _, err := pipe.Exec(ctx); err != nil && !isWrongType(err) {
		return entry.Entry{}, 0, err
	}
	if !isWrongType(val.Err()) {
		e, err := entry.Decode(val.Val(), l.s.maxValueBytes)
		return e, pt.Val(), err
	}
	pipe = l.rdb.Pipeline()
	hm := pipe.HMGet(ctx, prev, entry.Fields...)
	pt = pipe.PTTL(ctx, prev)
	if _, err := pipe.Exec(ctx); err != nil {
		return entry.Entry{}, 0, err
	}
	e, err := entry.DecodeHash(hm.Val())
	return e, pt.Val(), err
}
