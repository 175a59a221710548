package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/local"
)

// getManyConcurrency bounds the misses of one GetMany loaded at once
// through Get's path.
const getManyConcurrency = 16

// GetMany returns the values of keys that exist: the hits from one
// pipelined round of GETRANGEs (one round trip per Redis node), and the
// misses loaded with the same guarantees as Get (singleflight, leases,
// versioned fills, no stale read after a completed invalidation). Keys
// whose row does not exist are absent from the map; duplicate keys are read
// once. The error joins the failures of individual loads (each wrapping its
// key) — the map still holds every value that could be had. When Redis
// fails, every key is loaded (fail-open), as with Get.
//
// With a Loader built by New, the misses each go through Get's path, 16 at
// a time. With a Loader built by NewBatch, the misses take their leases in
// pipelined rounds and those granted are loaded by one BatchLoadFunc call
// per 500 keys and filled in one pipelined round; see NewBatch.
//
// When ctx ends first, GetMany returns what it has with an error matching
// ctx.Err(); loads already started go on for the other callers waiting on
// them and still fill Redis.
func (l *Loader[T]) GetMany(ctx context.Context, keys []string) (_ map[string]T, err error) {
	uniq := make([]string, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if err := l.check(k); err != nil {
			return nil, err
		}
		if !seen[k] {
			seen[k] = true
			uniq = append(uniq, k)
		}
	}
	res := &manyResult[T]{out: make(map[string]T, len(uniq))}
	if len(uniq) == 0 {
		return res.out, nil
	}
	ctx, sp := l.startOp(ctx, OpGetMany, "", len(uniq))
	defer func() { endOp(sp, err) }()

	// Taken before the reads are sent: whatever this process issues later
	// reflects every invalidation completed before GetMany began (P3b).
	seq := l.seq.Add(1)
	// One pipeline of reads, sent after GetMany began: what it returns
	// reflects every invalidation completed before, too.
	// On a Redis Cluster, one pipeline per master, each through its
	// master's breaker. A key whose read was not sent has no command.
	budget := redisBudget{left: l.s.redisTimeout}
	var tk local.Ticket // refused unless taken below, before the reads
	if l.tier != nil && !l.readBypass.Load() {
		if uniq = l.localGetMany(ctx, &budget, uniq, res); len(uniq) == 0 {
			return res.out, nil
		}
		tk = l.tier.stream.Begin()
	}
	cmds := make([]*redis.StringCmd, len(uniq))
	if !l.readBypass.Load() {
		rkeys := make([]string, len(uniq))
		for i, k := range uniq {
			rkeys[i] = l.Key(k)
		}
		_ = l.perMaster(ctx, &budget, rkeys, l.redisCallKey, func(ctx context.Context, idx []int) error {
			pipe := l.rdb.Pipeline()
			for _, i := range idx {
				cmds[i] = l.readEntry(ctx, pipe, rkeys[i])
			}
			_, err := pipe.Exec(ctx)
			return err
		})
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	batching := l.batch != nil && !l.readBypass.Load() && l.s.prevPrefix == ""
	var (
		misses []manyMiss // through Get's path
		batch  []batchKey // through the batch load
	)
	now := l.clock.serverNow()
	for i, k := range uniq {
		// perKey sends k through Get's path, which knows what to do with
		// bypassed keys, corrupt entries and values kept for stale serving.
		perKey := func() { misses = append(misses, manyMiss{key: k}) }
		miss := func(gen int64) {
			if batching {
				batch = append(batch, batchKey{key: k, c: caller{seq: seq, gen: gen}})
			} else {
				perKey()
			}
		}
		// missRead is a miss whose entry was read: Get's path starts from
		// it instead of reading it again.
		missRead := func(e entry.Entry) {
			if batching {
				miss(e.Generation)
			} else {
				misses = append(misses, manyMiss{key: k, pre: &preRead{seq: seq, e: e}})
			}
		}
		if l.retry.pending.has(k) || l.readBypass.Load() {
			perKey()
			continue
		}
		if cmds[i] == nil {
			miss(0)
			continue
		}
		val, err := cmds[i].Result()
		switch {
		case isWrongType(err):
			perKey()
			continue
		case err != nil:
			miss(0)
			continue
		}
		e, err := entry.Decode(val, l.s.maxValueBytes)
		switch {
		case err != nil:
			perKey() // corrupt: Get counts and replaces it
			continue
		case e.Usable() && e.FreshAt(now):
		case e.HasPayload && l.s.maxStale > 0 && (l.s.swr || l.s.staleIfError):
			perKey() // Get decides whether to serve it stale
			continue
		default:
			missRead(e)
			continue
		}
		if e.Negative() {
			l.countIn(ctx, EventNegativeHit)
			continue
		}
		v, err := l.decode(e.Payload)
		if err != nil {
			perKey() // corrupt: Get counts and replaces it
			continue
		}
		if l.refreshDue(&e, now) {
			l.refresh(ctx, k, l.Key(k), e.SoftExpiry) // as Get does
		}
		l.sampleHit(ctx, k, l.Key(k))
		if l.tier != nil {
			l.localFill(ctx, tk, l.Key(k), v, &e, now)
		}
		l.countIn(ctx, EventHit)
		res.out[k] = v
	}

	var wg sync.WaitGroup
	wg.Go(func() { l.getEach(ctx, misses, res) })
	rejected, unanswered := l.getBatch(ctx, budget, batch, res)
	wg.Wait()
	if unanswered > 0 {
		res.errs = append(res.errs, fmt.Errorf("cache: GetMany %s: %d keys unanswered: %w", l.name, unanswered, ctx.Err()))
		return res.out, errors.Join(res.errs...)
	}
	// Keys whose in-process flight turned out older than what this
	// GetMany observed: read and load them again, like Get.
	again := make([]manyMiss, len(rejected))
	for i, k := range rejected {
		again[i] = manyMiss{key: k}
	}
	l.getEach(ctx, again, res)
	return res.out, errors.Join(res.errs...)
}

// manyResult collects the answers of one GetMany.
type manyResult[T any] struct {
	mu   sync.Mutex // protects out and errs
	out  map[string]T
	errs []error
}

// add records the outcome of one key: a value, not found, or an error.
func (r *manyResult[T]) add(key string, v T, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.out[key] = v
	case errors.Is(err, ErrNotFound):
	default:
		r.errs = append(r.errs, fmt.Errorf("%q: %w", key, err))
	}
}

// manyMiss is a key of a GetMany for Get's path, with its entry when
// GetMany's read of it can stand for Get's.
type manyMiss struct {
	key string
	pre *preRead // nil: Get reads the entry itself
}

// getEach answers keys each through Get's path, getManyConcurrency at a
// time.
func (l *Loader[T]) getEach(ctx context.Context, keys []manyMiss, res *manyResult[T]) {
	var (
		wg  sync.WaitGroup
		sem = make(chan struct{}, getManyConcurrency)
	)
	for _, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			v, _, err := l.getFrom(ctx, k.key, k.pre)
			res.add(k.key, v, err)
		})
	}
	wg.Wait()
}
