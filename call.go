package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// redisBudget is how long a caller may still wait on Redis; every call
// spends from it.
type redisBudget struct{ left time.Duration }

// redisCall runs fn, one Redis call, through the breaker, bounded by what
// is left of b, and spends the time it took from b. It returns
// ErrRedisUnavailable, without calling fn, while the breaker is open or b
// is spent; it counts Redis failures.
func (l *Loader[T]) redisCall(ctx context.Context, b *redisBudget, fn func(ctx context.Context) error) error {
	return l.call(ctx, b, l.breaker, fn)
}

// redisCallKey is redisCall for a call about rkey alone: on a Redis
// Cluster it goes through the breaker of rkey's master.
func (l *Loader[T]) redisCallKey(ctx context.Context, b *redisBudget, rkey string, fn func(ctx context.Context) error) error {
	return l.call(ctx, b, l.breakerFor(ctx, b, rkey), fn)
}

// redisCaller is redisCallKey or redisCallPastBreaker.
type redisCaller func(ctx context.Context, b *redisBudget, rkey string, fn func(ctx context.Context) error) error

// redisCallPastBreaker is redisCall without the breaker: fn is called
// whatever its state, and its outcome is not reported to it. It is for
// Close's last try at the queued invalidations, which must not be skipped
// because the breaker has not yet noticed that Redis is back.
func (l *Loader[T]) redisCallPastBreaker(ctx context.Context, b *redisBudget, _ string, fn func(ctx context.Context) error) error {
	return l.call(ctx, b, nil, fn)
}

func (l *Loader[T]) call(ctx context.Context, b *redisBudget, br *breaker, fn func(ctx context.Context) error) error {
	left := b.left
	if left <= 0 {
		// The caller's RedisTimeout is spent (the calls before this one
		// took it, or a busy machine did): counted, so that a load it
		// causes is not a mystery.
		l.count(EventBudgetSpent)
		return ErrRedisUnavailable
	}
	start := time.Now()
	var err error
	if br == nil {
		err = l.countRedisErr(callWithTimeout(ctx, left, fn))
	} else {
		if br.closed.Load() {
			_, err = br.cb.Execute(func() (struct{}, error) {
				return struct{}{}, callWithTimeout(ctx, left, fn)
			})
		} else {
			err = gobreaker.ErrOpenState // the prober asks Redis
		}
		l.flushBreakerChanges()
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			l.count(EventRedisSkipped)
			// The calls that opened the breaker failed; keep the slot map
			// current meanwhile, so that the probe and the calls after it
			// go to a promoted replica rather than fail on the dead master
			// (tripping the breaker again) until a failure asks again.
			l.reloadTopology(ctx)
			b.left -= time.Since(start)
			return ErrRedisUnavailable
		}
		err = l.countRedisErr(err)
	}
	d := time.Since(start)
	b.left -= d
	l.observeRedis(d, err)
	switch {
	case err == nil:
		// Redis answers: queued invalidations need not wait out their
		// backoff.
		if l.retry.queued() {
			l.nudgeRetrier()
		}
	case !answered(err) && !callerLeft(err):
		l.reloadTopology(ctx)
	}
	return err
}

func callWithTimeout(ctx context.Context, d time.Duration, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, d)
	err := fn(cctx)
	cancel()
	// Only a cancellation says nothing about Redis: a caller's deadline
	// shorter than RedisTimeout that Redis did not meet is a Redis failure
	// for that caller, and the breaker must see it.
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		return callerGone{err}
	}
	return err
}

// perMaster makes one Redis call, through call, for the keys rkeys of
// each Redis Cluster master, the masters' calls at once, each through its
// master's breaker and within b (one call for all elsewhere, and before the
// slot map is known): fn sends the commands of the keys at idx. It spends
// from b the longest call and returns the first error.
func (l *Loader[T]) perMaster(ctx context.Context, b *redisBudget, rkeys []string, call redisCaller, fn func(ctx context.Context, idx []int) error) error {
	var (
		groups  [][]int
		masters = map[string]int{} // master → index in groups
	)
	for i, rk := range rkeys {
		m := l.masterOf(ctx, rk)
		g, ok := masters[m]
		if !ok {
			g = len(groups)
			masters[m] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	if len(groups) <= 1 {
		if len(groups) == 0 {
			return nil
		}
		return call(ctx, b, rkeys[0], func(ctx context.Context) error { return fn(ctx, groups[0]) })
	}
	errs := make([]error, len(groups))
	left := make([]time.Duration, len(groups))
	var wg sync.WaitGroup
	for g, idx := range groups {
		wg.Go(func() {
			gb := *b
			errs[g] = call(ctx, &gb, rkeys[idx[0]], func(ctx context.Context) error { return fn(ctx, idx) })
			left[g] = gb.left
		})
	}
	wg.Wait()
	b.left = slices.Min(left)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// countRedisErr counts err when it is a failure of Redis itself (not an
// error reply such as WRONGTYPE, nor the caller leaving).
func (l *Loader[T]) countRedisErr(err error) error {
	if err == nil {
		return nil
	}
	if !answered(err) && !callerLeft(err) {
		l.count(EventRedisError)
	}
	return err
}

// answered reports whether err is an error reply that says Redis is up and
// serving (WRONGTYPE, NOSCRIPT, ...): not a failure of Redis. Replies that
// say it cannot serve — out of memory, no replicas to write to, a replica
// or a loading server, a cluster slot not served — are failures: they are
// counted as Redis errors and trip the breaker.
func answered(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	for _, p := range unavailableReplies {
		if strings.HasPrefix(msg, p) {
			return false
		}
	}
	return true
}

// unavailableReplies are the error replies of a Redis that cannot serve.
var unavailableReplies = []string{
	"OOM", "NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY ",
}

// callerGone marks a Redis call cut short by its caller's own context: it
// says nothing about Redis, so the breaker ignores it.
type callerGone struct{ err error }

func (c callerGone) Error() string { return c.err.Error() }
func (c callerGone) Unwrap() error { return c.err }

// callerLeft reports whether err marks a call cut short by its caller.
func callerLeft(err error) bool {
	var gone callerGone
	return errors.As(err, &gone)
}
