package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
)

// getManyConcurrency bounds the misses of one GetMany loaded at once.
const getManyConcurrency = 16

// GetMany returns the values of keys that exist: the hits from one
// pipelined round of HMGETs (one round trip per Redis node), and the misses
// each through Get's path (singleflight, leases, fills), 16 at a time. Keys
// whose row does not exist are absent from the map; duplicate keys are read
// once. The error joins the failures of individual loads (each wrapping its
// key) — the map still holds every value that could be had. When Redis
// fails, every key is loaded (fail-open), as with Get.
func (l *Loader[T]) GetMany(ctx context.Context, keys []string) (map[string]T, error) {
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
	out := make(map[string]T, len(uniq))
	if len(uniq) == 0 {
		return out, nil
	}

	// One pipeline of reads, sent after GetMany began: what it returns
	// reflects every invalidation completed before (DESIGN P3b).
	var cmds []*redis.SliceCmd
	budget := redisBudget{left: l.s.redisTimeout}
	if !l.readBypass.Load() {
		_ = l.redisCall(ctx, &budget, func(ctx context.Context) error {
			pipe := l.rdb.Pipeline()
			cmds = make([]*redis.SliceCmd, len(uniq))
			for i, k := range uniq {
				cmds[i] = pipe.HMGet(ctx, l.Key(k), entry.Fields...)
			}
			_, err := pipe.Exec(ctx)
			return err
		})
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var misses []string
	now := l.clock.serverNow()
	for i, k := range uniq {
		if cmds == nil || l.pending.has(k) {
			misses = append(misses, k)
			continue
		}
		vals, err := cmds[i].Result()
		if err != nil {
			misses = append(misses, k)
			continue
		}
		e, err := entry.Decode(vals)
		if err != nil || !e.Usable() || !e.FreshAt(now) {
			misses = append(misses, k)
			continue
		}
		if e.Negative() {
			l.count(EventNegativeHit)
			continue
		}
		v, err := l.decode(e.Payload)
		if err != nil {
			misses = append(misses, k) // corrupt: Get counts and replaces it
			continue
		}
		l.count(EventHit)
		out[k] = v
	}

	var (
		mu   sync.Mutex // protects out and errs
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, getManyConcurrency)
	)
	for _, k := range misses {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			v, _, err := l.get(ctx, k)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				out[k] = v
			case errors.Is(err, ErrNotFound):
			default:
				errs = append(errs, fmt.Errorf("%q: %w", k, err))
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}
