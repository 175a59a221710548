package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
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
// entry and Set returns the encoding error. Redis errors are returned (while
// the circuit breaker is open, at once: ErrRedisUnavailable).
//
// WARNING: Set cannot tell when the write it stores began. If another
// writer commits a newer row and invalidates key between this writer's
// commit and its Set, an unversioned value (or one whose newer version was
// never stored) lands anyway and stays until its TTL. WriteThrough closes
// that gap; prefer it, or Invalidate, to Set.
func (l *Loader[T]) Set(ctx context.Context, key string, v T) error {
	if err := l.check(key); err != nil {
		return err
	}
	ctx, sp := l.startOp(ctx, OpSet, key, 1)
	r, err := l.set(ctx, key, v, anyGeneration)
	l.countWrite(OpSet, r)
	endOp(sp, err)
	return err
}

// anyGeneration lets set store whatever invalidations happened before.
const anyGeneration = script.AnyGeneration

// set stores v if key's generation is still gen (see set.lua), and says
// how that ended: stored, invalidated instead, or failed.
func (l *Loader[T]) set(ctx context.Context, key string, v T, gen string) (WriteResult, error) {
	defer l.dropLocal(key) // after the Redis write: a Get's read sent before it is refused
	payload, version, err := l.encode(v)
	if err != nil {
		_, ierr := l.invalidate(ctx, []string{key})
		r := WriteInvalidated
		if ierr != nil {
			r = WriteFailed
		}
		if errors.Is(err, ErrTooLarge) {
			return r, ierr
		}
		return r, errors.Join(err, ierr)
	}
	ttl := l.s.valueTTL()
	c := script.SetCall(l.Key(key), script.Set{
		Payload: payload, Version: version, KeyTTL: ttl + l.s.maxStale, SoftTTL: ttl,
		Tombstone: l.s.tombstoneTTL, Generation: gen, Token: script.NewToken(),
	})
	var n int64
	err = l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, c.Key, func(ctx context.Context) (err error) {
		n, err = c.Run(ctx, l.rdb).Int64()
		return err
	})
	if err != nil {
		return WriteFailed, fmt.Errorf("cache: set %q: %w", key, err)
	}
	r := WriteStored
	if n != script.Stored {
		l.countIn(ctx, EventStaleSetPrevented)
		r = WriteInvalidated // the script invalidates what it refuses
	}
	if err := l.dropPrevious(ctx, []string{key}, &redisBudget{left: l.s.redisTimeout}, l.redisCallKey); err != nil {
		return WriteFailed, fmt.Errorf("cache: set %q: invalidating its previous key: %w", key, err)
	}
	return r, nil
}

// dropPrevious deletes the keys' entries in the previous key format, if
// one is configured: processes still on it must not serve what changed. A
// deleted entry is as safe as a tombstone for them: their fills need the
// lease the entry held, and their next read loads the row.
func (l *Loader[T]) dropPrevious(ctx context.Context, keys []string, b *redisBudget, call redisCaller) error {
	if l.s.prevPrefix == "" || len(keys) == 0 {
		return nil
	}
	prev := make([]string, len(keys))
	for i, k := range keys {
		prev[i] = l.s.prevPrefix + k
	}
	return l.perMaster(ctx, b, prev, call, func(ctx context.Context, idx []int) error {
		pipe := l.rdb.Pipeline()
		for _, i := range idx {
			pipe.Del(ctx, prev[i])
		}
		_, err := pipe.Exec(ctx)
		return err
	})
}

// Invalidate marks the keys' entries invalid, present or not: the next Get
// of each loads from the database, and no fill that began before Invalidate
// returned can store what it loaded. Call it after the database commit.
// All keys go to Redis in one pipeline, retried within InvalidateTimeout;
// the keys it could not invalidate by then (at once while the circuit
// breaker is open) are queued and applied in the background, and the
// error, which names them, wraps ErrQueued. Invalidations of the keys that
// WriteThrough queued are applied with it.
func (l *Loader[T]) Invalidate(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := l.check(k); err != nil {
			return err
		}
	}
	ctx, sp := l.startOp(ctx, OpInvalidate, oneKey(keys), len(keys))
	err := l.invalidateDurably(ctx, keys, nil)
	l.countInvalidate(err)
	endOp(sp, err)
	return err
}

// KeyVersion names a key to invalidate and the version of its row as
// committed (0: unversioned, or the row was deleted).
type KeyVersion struct {
	Key     string
	Version int64
}

// InvalidateVersions invalidates like Invalidate and leaves each key a
// version floor: no fill or Set of a value with a lower version lands
// afterwards, not even one that began after the invalidation but read the
// row before its commit became visible (a change stream such as the
// binlog can deliver a commit before other sessions see it); and while
// the floor stands, no negative entry either (the row exists). A Version
// of 0 sets no floor. Versions below 0 are refused with ErrNegativeVersion.
// An invalidation that had to be queued (ErrQueued) is applied without its
// floor.
func (l *Loader[T]) InvalidateVersions(ctx context.Context, kvs ...KeyVersion) error {
	keys := make([]string, len(kvs))
	floors := make([]int64, len(kvs))
	for i, kv := range kvs {
		if err := l.check(kv.Key); err != nil {
			return err
		}
		if kv.Version < 0 {
			return fmt.Errorf("%w: %d for %q", ErrNegativeVersion, kv.Version, kv.Key)
		}
		keys[i], floors[i] = kv.Key, kv.Version
	}
	ctx, sp := l.startOp(ctx, OpInvalidate, oneKey(keys), len(keys))
	err := l.invalidateDurably(ctx, keys, floors)
	l.countInvalidate(err)
	endOp(sp, err)
	return err
}

// countInvalidate counts an Invalidate or InvalidateVersions that ended
// with err (nil or ErrQueued).
func (l *Loader[T]) countInvalidate(err error) {
	if err != nil {
		l.countWrite(OpInvalidate, WriteQueued)
	} else {
		l.countWrite(OpInvalidate, WriteInvalidated)
	}
}

// invalidateDurably invalidates keys (with floors, when not nil) within
// InvalidateTimeout: what fails is sent again with backoff while the
// budget lasts, Redis answers (not an open breaker) and ctx lives; what
// still fails is queued, and the error wraps ErrQueued.
func (l *Loader[T]) invalidateDurably(ctx context.Context, keys []string, floors []int64) error {
	deadline := time.Now().Add(l.s.invalTimeout)
	backoff := 5 * time.Millisecond
	for {
		failed, err := l.invalidateQueued(ctx, keys, floors, time.Until(deadline))
		if err == nil {
			return nil
		}
		if len(failed) < len(keys) {
			keys, floors = only(failed, keys, floors)
		}
		if errors.Is(err, ErrRedisUnavailable) || ctx.Err() != nil || time.Until(deadline) < backoff {
			for _, k := range keys {
				l.enqueueInvalidation(k)
			}
			l.note(ctx, EventInvalidationQueued)
			return fmt.Errorf("%w: %w", ErrQueued, err)
		}
		t := time.NewTimer(jittered(backoff, 0.5))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		backoff *= 2
	}
}

// only returns the keys of failed, and their floors (nil when floors is).
func only(failed, keys []string, floors []int64) ([]string, []int64) {
	if floors == nil {
		return failed, nil
	}
	left := make(map[string]bool, len(failed))
	for _, k := range failed {
		left[k] = true
	}
	var fl []int64
	for i, k := range keys {
		if left[k] {
			fl = append(fl, floors[i])
		}
	}
	return failed, fl
}

// invalidateQueued is invalidate (with floors, within budget) that also
// takes off the queue the keys' queued invalidations it covers: those
// enqueued before it was sent, for the keys it applied.
func (l *Loader[T]) invalidateQueued(ctx context.Context, keys []string, floors []int64, budget time.Duration) ([]string, error) {
	snap := l.retry.pending.snapshotOf(keys)
	failed, err := l.invalidateWith(ctx, keys, floors, budget, l.redisCallKey)
	if snap != nil {
		l.dequeue(snap, failed)
	}
	return failed, err
}

// invalidate returns the keys it could not invalidate with the error. With
// a previous key format configured, the keys' entries in that format are
// dropped too: processes still on it must not serve what changed.
func (l *Loader[T]) invalidate(ctx context.Context, keys []string) ([]string, error) {
	return l.invalidateWith(ctx, keys, nil, l.s.redisTimeout, l.redisCallKey)
}

// invalidateWith is invalidate with its Redis calls made by call within
// budget, and with floors[i] (when floors is not nil) the version floor of
// keys[i].
func (l *Loader[T]) invalidateWith(ctx context.Context, keys []string, floors []int64, budget time.Duration, call redisCaller) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	defer l.dropLocal(keys...) // after the Redis writes: a Get's read sent before them is refused
	calls := make([]script.Call, len(keys))
	for i, k := range keys {
		var floor int64
		if floors != nil {
			floor = floors[i]
		}
		calls[i] = script.Invalidate(l.Key(k), l.s.tombstoneTTL, l.s.maxStale > 0, floor)
	}
	cmds := make([]*redis.Cmd, len(calls))
	b := redisBudget{left: budget}
	var err error
	if len(calls) == 1 {
		err = call(ctx, &b, calls[0].Key, func(ctx context.Context) error {
			cmds[0] = calls[0].Run(ctx, l.rdb)
			return cmds[0].Err()
		})
	} else {
		// One pipeline per Redis Cluster master, each through its
		// breaker. A key whose invalidation was not sent has no command.
		cmds, err = l.runScriptsWith(ctx, &b, calls, call)
	}
	if err == nil {
		err = l.dropPrevious(ctx, keys, &b, call)
		if err != nil {
			return keys, fmt.Errorf("cache: invalidate %q: previous key format: %w", keys, err)
		}
		return nil, nil
	}
	var failed []string
	for i, c := range cmds {
		if c == nil || c.Err() != nil {
			failed = append(failed, keys[i])
		}
	}
	return failed, fmt.Errorf("cache: invalidate %q: %w", failed, err)
}

// WriteThrough runs write, which commits the change to the database and
// returns the new value, and then stores that value like Set, unless
// another Set or Invalidate of key happened meanwhile: then it invalidates
// instead, since the other writer's commit may be the newer one. It costs
// one Redis read before write. When write fails, its error is returned and
// Redis is not changed.
//
// Once write has committed, the database is the truth and WriteThrough
// returns the value without error whatever Redis does: if the Set fails it
// invalidates instead, retried within InvalidateTimeout as Invalidate
// does, and if that fails too (or the circuit breaker is open) the
// invalidation is queued and retried in the background until it lands;
// until then, this process's Gets of key bypass Redis. The caller's cancellation
// after the commit does not stop this.
//
// WARNING: a queued invalidation lives in this process's memory only; if the
// process dies before it is applied, the entry stays stale until its TTL.
// The queue holds 4096 keys; beyond that invalidations are dropped, counted
// and logged.
func (l *Loader[T]) WriteThrough(ctx context.Context, key string, write func(ctx context.Context) (T, error)) (_ T, err error) {
	var zero T
	if err := l.check(key); err != nil {
		return zero, err
	}
	ctx, sp := l.startOp(ctx, OpWriteThrough, key, 1)
	result := WriteFailed // until the write commits
	defer func() {
		l.countWrite(OpWriteThrough, result)
		endOp(sp, err)
	}()
	// The entry's generation before the write: if another writer
	// invalidates or sets key after it, that writer's value may be newer
	// than ours (it may have committed after us but reached Redis first),
	// so our Set must not land. Unknown when Redis fails: then we only
	// invalidate.
	gen, genErr := "", errNoGeneration
	if !l.retry.pending.has(key) { // else it only invalidates: see below
		gen, genErr = l.generation(ctx, key)
	}
	v, err := l.callWrite(ctx, key, write)
	if errors.Is(err, ErrNotFound) {
		return zero, notFound(l.name, key, err)
	}
	if err != nil {
		return zero, err
	}
	// Once committed, Redis must not keep the old value: what cannot be
	// stored is invalidated as Invalidate does it, retried within
	// InvalidateTimeout and then queued.
	rctx := context.WithoutCancel(ctx)
	switch {
	case l.retry.pending.has(key):
		// An older invalidation of key is still queued: keep the order,
		// storing nothing before it lands. One invalidation sent now
		// covers both commits, so try it rather than wait for the
		// retrier (whose backoff may run to seconds).
		result = l.invalidateAfterWrite(rctx, key)
	case genErr != nil:
		result = l.invalidateAfterWrite(rctx, key)
	default:
		var serr error
		if result, serr = l.set(rctx, key, v, gen); serr != nil {
			l.s.logger.Warn("cache: write-through set failed; invalidating", "loader", l.name, "key", key, "err", serr)
			result = l.invalidateAfterWrite(rctx, key)
		}
	}
	return v, nil
}

// invalidateAfterWrite invalidates key after a committed write, as
// Invalidate does (retried within InvalidateTimeout, then queued), and
// says which happened.
func (l *Loader[T]) invalidateAfterWrite(ctx context.Context, key string) WriteResult {
	if err := l.invalidateDurably(ctx, []string{key}, nil); err != nil {
		return WriteQueued
	}
	return WriteInvalidated
}

// errNoGeneration marks a generation WriteThrough did not read.
var errNoGeneration = errors.New("cache: generation not read")

// generation returns key's entry generation as stored ("0" when absent).
func (l *Loader[T]) generation(ctx context.Context, key string) (string, error) {
	var g int64
	err := l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, l.Key(key), func(ctx context.Context) error {
		h, err := l.rdb.GetRange(ctx, l.Key(key), 0, entry.HeaderSize-1).Result()
		if isWrongType(err) {
			err = nil // not an entry: the set script treats it as absent
		}
		g = entry.GenerationOf(h)
		return err
	})
	return strconv.FormatInt(g, 10), err
}
