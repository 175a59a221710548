package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/script"
)

// Set stores v as key's value after the application wrote it to the
// database. It voids any fill in flight, so a load that read the row before
// the write cannot overwrite v. If v is Versioned and Redis holds a higher
// version, v is not stored and the entry is invalidated instead (the next
// Get loads the truth).
//
// A value that cannot be cached (larger than MaxValueBytes) invalidates the
// entry and Set returns nil; one the Codec cannot encode invalidates the
// entry and Set returns the encoding error. Redis errors are returned.
func (l *Loader[T]) Set(ctx context.Context, key string, v T) error {
	if err := l.check(key); err != nil {
		return err
	}
	return l.set(ctx, key, v)
}

func (l *Loader[T]) set(ctx context.Context, key string, v T) error {
	payload, version, err := l.encode(v)
	if err != nil {
		ierr := l.invalidate(ctx, []string{key})
		if errors.Is(err, ErrTooLarge) {
			return ierr
		}
		return errors.Join(err, ierr)
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	n, err := script.Set.Run(ctx, l.rdb, []string{l.Key(key)}, payload,
		strconv.FormatInt(version, 10), ms(l.s.valueTTL()), 0, ms(l.s.tombstoneTTL)).Int()
	if err != nil {
		l.count(EventRedisError)
		return fmt.Errorf("cache: set %q: %w", key, err)
	}
	if n != script.Stored {
		l.count(EventStaleSetPrevented)
	}
	return nil
}

// Invalidate marks the keys' entries invalid, present or not: the next Get
// of each loads from the database, and no fill that began before Invalidate
// returned can store what it loaded. Call it after the database commit.
// All keys go to Redis in one pipeline; the error names the keys that
// could not be invalidated.
func (l *Loader[T]) Invalidate(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := l.check(k); err != nil {
			return err
		}
	}
	return l.invalidate(ctx, keys)
}

func (l *Loader[T]) invalidate(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	tomb := ms(l.s.tombstoneTTL)
	if len(keys) == 1 {
		if err := script.Invalidate.Run(ctx, l.rdb, []string{l.Key(keys[0])}, tomb).Err(); err != nil {
			l.count(EventRedisError)
			return fmt.Errorf("cache: invalidate %q: %w", keys[0], err)
		}
		return nil
	}
	cmds, err := l.invalidatePipeline(ctx, keys, tomb, false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmds, err = l.invalidatePipeline(ctx, keys, tomb, true)
	}
	if err == nil {
		return nil
	}
	l.count(EventRedisError)
	var failed []string
	for i, c := range cmds {
		if c.Err() != nil {
			failed = append(failed, keys[i])
		}
	}
	return fmt.Errorf("cache: invalidate %q: %w", failed, err)
}

// invalidatePipeline sends one invalidate per key in one round trip, by
// script hash or, when the server lacks the script, by source.
func (l *Loader[T]) invalidatePipeline(ctx context.Context, keys []string, tomb int64, bySource bool) ([]*redis.Cmd, error) {
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(keys))
	for i, k := range keys {
		if bySource {
			cmds[i] = script.Invalidate.Eval(ctx, pipe, []string{l.Key(k)}, tomb)
		} else {
			cmds[i] = script.Invalidate.EvalSha(ctx, pipe, []string{l.Key(k)}, tomb)
		}
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
}

// WriteThrough runs write, which commits the change to the database and
// returns the new value, and then stores that value with Set. When write
// fails, its error is returned and Redis is not touched.
//
// Once write has committed, the database is the truth and WriteThrough
// returns the value without error whatever Redis does: if the Set fails it
// invalidates instead, and if that fails too the invalidation is queued and
// retried in the background (counted as invalidation_queued, _retried and
// _dropped). The caller's cancellation after the commit does not stop this.
//
// WARNING: a queued invalidation lives in this process's memory only; if the
// process dies before it is applied, the entry stays stale until its TTL.
func (l *Loader[T]) WriteThrough(ctx context.Context, key string, write func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if err := l.check(key); err != nil {
		return zero, err
	}
	v, err := write(ctx)
	if err != nil {
		return zero, err
	}
	rctx := context.WithoutCancel(ctx)
	if err := l.set(rctx, key, v); err != nil {
		l.s.logger.Warn("cache: write-through set failed; invalidating", "loader", l.name, "key", key, "err", err)
		if err := l.invalidate(rctx, []string{key}); err != nil {
			l.enqueueInvalidation(key)
		}
	}
	return v, nil
}
