package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"

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
	return l.set(ctx, key, v, anyGeneration)
}

// anyGeneration lets set store whatever invalidations happened before.
const anyGeneration = ""

// set stores v if key's generation is still gen (see set.lua).
func (l *Loader[T]) set(ctx context.Context, key string, v T, gen string) error {
	payload, version, err := l.encode(v)
	if err != nil {
		_, ierr := l.invalidate(ctx, []string{key})
		if errors.Is(err, ErrTooLarge) {
			return ierr
		}
		return errors.Join(err, ierr)
	}
	ttl := l.s.valueTTL()
	var n int
	err = l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, l.Key(key), func(ctx context.Context) (err error) {
		n, err = script.Set.Run(ctx, l.rdb, []string{l.Key(key)}, payload, strconv.FormatInt(version, 10),
			ms(ttl+l.s.maxStale), ms(ttl), ms(l.s.tombstoneTTL), gen).Int()
		return err
	})
	if err != nil {
		return fmt.Errorf("cache: set %q: %w", key, err)
	}
	if n != script.Stored {
		l.count(EventStaleSetPrevented)
	}
	if l.s.prevPrefix != "" {
		// Processes still on the previous key format must not serve the
		// value this write replaced.
		err = l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, l.s.prevPrefix+key, func(ctx context.Context) error {
			return script.Invalidate.Run(ctx, l.rdb, []string{l.s.prevPrefix + key}, ms(l.s.tombstoneTTL), "0", "0").Err()
		})
		if err != nil {
			return fmt.Errorf("cache: set %q: invalidating its previous key: %w", key, err)
		}
	}
	return nil
}

// Invalidate marks the keys' entries invalid, present or not: the next Get
// of each loads from the database, and no fill that began before Invalidate
// returned can store what it loaded. Call it after the database commit.
// All keys go to Redis in one pipeline; the error names the keys that
// could not be invalidated (while the circuit breaker is open, all of them,
// at once: ErrRedisUnavailable). Invalidations of the keys that WriteThrough
// queued are applied with it.
func (l *Loader[T]) Invalidate(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := l.check(k); err != nil {
			return err
		}
	}
	_, err := l.invalidateQueued(ctx, keys)
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
// binlog can deliver a commit before other sessions see it). A Version of
// 0 sets no floor. Versions below 0 are refused with ErrNegativeVersion.
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
	snap := l.pending.snapshotOf(keys)
	failed, err := l.invalidateWith(ctx, keys, floors, l.redisCallKey)
	if snap != nil {
		l.dequeue(snap, failed)
	}
	return err
}

// invalidateQueued is invalidate that also takes off the queue the keys'
// queued invalidations it covers: those enqueued before it was sent, for
// the keys it applied.
func (l *Loader[T]) invalidateQueued(ctx context.Context, keys []string) ([]string, error) {
	snap := l.pending.snapshotOf(keys)
	failed, err := l.invalidate(ctx, keys)
	if snap != nil {
		l.dequeue(snap, failed)
	}
	return failed, err
}

// redisCaller is redisCallKey or redisCallPastBreaker.
type redisCaller func(ctx context.Context, b *redisBudget, rkey string, fn func(ctx context.Context) error) error

// invalidate returns the keys it could not invalidate with the error. With
// a previous key format configured, the keys' entries in that format are
// invalidated too: processes still on it must not serve what changed.
func (l *Loader[T]) invalidate(ctx context.Context, keys []string) ([]string, error) {
	return l.invalidateWith(ctx, keys, nil, l.redisCallKey)
}

// invalidateWith is invalidate with its Redis call made by call, and with
// floors[i] (when floors is not nil) the version floor of keys[i].
func (l *Loader[T]) invalidateWith(ctx context.Context, keys []string, floors []int64, call redisCaller) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	rkeys := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		rkeys = append(rkeys, l.Key(k))
	}
	if l.s.prevPrefix != "" {
		for _, k := range keys {
			rkeys = append(rkeys, l.s.prevPrefix+k)
		}
	}
	tomb := ms(l.s.tombstoneTTL)
	keep := "0"
	if l.s.maxStale > 0 {
		keep = "1"
	}
	floor := func(i int) string {
		if floors == nil || i >= len(keys) {
			return "0" // no floor, and none for a previous key format's entry
		}
		return strconv.FormatInt(floors[i], 10)
	}
	if len(rkeys) == 1 {
		err := call(ctx, &redisBudget{left: l.s.redisTimeout}, rkeys[0], func(ctx context.Context) error {
			return script.Invalidate.Run(ctx, l.rdb, rkeys, tomb, keep, floor(0)).Err()
		})
		if err != nil {
			return keys, fmt.Errorf("cache: invalidate %q: %w", keys, err)
		}
		return nil, nil
	}
	// One pipeline per Redis Cluster master, each through its breaker. A
	// key whose invalidation was not sent has no command.
	cmds := make([]*redis.Cmd, len(rkeys))
	err := l.perMaster(ctx, &redisBudget{left: l.s.redisTimeout}, rkeys, call, func(ctx context.Context, idx []int) error {
		sub := make([]string, len(idx))
		subFloors := make([]string, len(idx))
		for j, i := range idx {
			sub[j], subFloors[j] = rkeys[i], floor(i)
		}
		sent, err := l.invalidatePipeline(ctx, sub, subFloors, tomb, keep, false)
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			sent, err = l.invalidatePipeline(ctx, sub, subFloors, tomb, keep, true)
		}
		for j, i := range idx {
			cmds[i] = sent[j]
		}
		return err
	})
	if err == nil {
		return nil, nil
	}
	var failed []string
	seen := make(map[string]bool)
	for i, c := range cmds {
		if k := keys[i%len(keys)]; (c == nil || c.Err() != nil) && !seen[k] {
			seen[k] = true
			failed = append(failed, k)
		}
	}
	return failed, fmt.Errorf("cache: invalidate %q: %w", failed, err)
}

// invalidatePipeline sends one invalidate per Redis key in one round trip,
// by script hash or, when the server lacks the script, by source.
func (l *Loader[T]) invalidatePipeline(ctx context.Context, rkeys, floors []string, tomb int64, keep string, bySource bool) ([]*redis.Cmd, error) {
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(rkeys))
	for i, k := range rkeys {
		if bySource {
			cmds[i] = script.Invalidate.Eval(ctx, pipe, []string{k}, tomb, keep, floors[i])
		} else {
			cmds[i] = script.Invalidate.EvalSha(ctx, pipe, []string{k}, tomb, keep, floors[i])
		}
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
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
// invalidates instead, and if that fails too (or the circuit breaker is
// open) the invalidation is queued and retried in the background until it
// lands; until then, Gets of key bypass Redis. The caller's cancellation
// after the commit does not stop this.
//
// WARNING: a queued invalidation lives in this process's memory only; if the
// process dies before it is applied, the entry stays stale until its TTL.
// The queue holds 4096 keys; beyond that invalidations are dropped, counted
// and logged.
func (l *Loader[T]) WriteThrough(ctx context.Context, key string, write func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if err := l.check(key); err != nil {
		return zero, err
	}
	// The entry's generation before the write: if another writer
	// invalidates or sets key after it, that writer's value may be newer
	// than ours (it may have committed after us but reached Redis first),
	// so our Set must not land. Unknown when Redis fails: then we only
	// invalidate.
	gen, genErr := l.generation(ctx, key)
	v, err := write(ctx)
	if err != nil {
		return zero, err
	}
	rctx := context.WithoutCancel(ctx)
	if l.pending.has(key) {
		// An older invalidation of key is still queued: keep the order,
		// storing nothing before it lands. One invalidation sent now
		// covers both commits, so try it rather than wait for the
		// retrier (whose backoff may run to seconds); queue only if it
		// fails.
		if _, err := l.invalidateQueued(rctx, []string{key}); err != nil {
			l.enqueueInvalidation(key)
		}
		return v, nil
	}
	if genErr != nil {
		if _, err := l.invalidate(rctx, []string{key}); err != nil {
			l.enqueueInvalidation(key)
		}
		return v, nil
	}
	if err := l.set(rctx, key, v, gen); err != nil {
		l.s.logger.Warn("cache: write-through set failed; invalidating", "loader", l.name, "key", key, "err", err)
		if _, err := l.invalidate(rctx, []string{key}); err != nil {
			l.enqueueInvalidation(key)
		}
	}
	return v, nil
}

// generation returns key's entry generation as stored ("0" when absent).
func (l *Loader[T]) generation(ctx context.Context, key string) (string, error) {
	var g string
	err := l.redisCallKey(ctx, &redisBudget{left: l.s.redisTimeout}, l.Key(key), func(ctx context.Context) error {
		var err error
		g, err = l.rdb.HGet(ctx, l.Key(key), entry.Generation).Result()
		if errors.Is(err, redis.Nil) {
			g, err = "0", nil
		}
		return err
	})
	return g, err
}
