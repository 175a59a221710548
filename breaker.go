package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// ErrRedisUnavailable is wrapped by the errors of Set and Invalidate while
// the circuit breaker is open: Redis was not called.
// (Internally it also marks a Get whose Redis budget is spent.)
var ErrRedisUnavailable = errors.New("cache: redis unavailable (circuit breaker open)")

// BreakerState is the state of a Loader's circuit breaker around Redis.
type BreakerState int

// Breaker states.
const (
	BreakerClosed   BreakerState = iota // Redis is called
	BreakerHalfOpen                     // one probe call is let through
	BreakerOpen                         // Redis is not called
)

// String returns "closed", "half-open" or "open".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// callerGone marks a Redis call cut short by its caller's own context: it
// says nothing about Redis, so the breaker ignores it.
type callerGone struct{ err error }

func (c callerGone) Error() string { return c.err.Error() }
func (c callerGone) Unwrap() error { return c.err }

// breaker is a circuit breaker around Redis calls: gobreaker's, with its
// state mirrored in closed, which calls read without its lock. Calls go
// through it only while it is closed; while it is open or half-open they
// are skipped at once, and the Loader's prober (probe.go) alone asks Redis,
// so that no Get ever waits on a half-open probe and the breaker closes as
// soon as Redis answers again, not when a caller happens by.
type breaker struct {
	cb     *gobreaker.CircuitBreaker[struct{}]
	closed atomic.Bool
}

// newBreaker returns a breaker of a Loader, or nil when disabled. Its
// state changes are queued on changes, to be reported outside the
// breaker's lock (see flushBreakerChanges); starting the prober is one
// such report.
func newBreaker(name string, s *settings, changes *breakerChanges) *breaker {
	if s.noBreaker {
		return nil
	}
	fails := uint32(s.breakerFails)
	b := &breaker{}
	b.closed.Store(true)
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     s.breakerCool,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= fails },
		IsSuccessful: func(err error) bool {
			return err == nil || answered(err)
		},
		IsExcluded: func(err error) bool {
			return err != nil && callerLeft(err)
		},
		OnStateChange: func(_ string, _, to gobreaker.State) {
			b.closed.Store(to == gobreaker.StateClosed)
			changes.add(breakerState(to))
		},
	})
	return b
}

// state returns the breaker's state (moving it from open to half-open when
// its cooldown has passed).
func (b *breaker) state() BreakerState { return breakerState(b.cb.State()) }

// breakerChanges queues the breaker's state changes. gobreaker reports them
// with its lock held; a Recorder or Logger called there that asked for the
// breaker's state would deadlock, so they are reported after the call.
type breakerChanges struct {
	n  atomic.Int32 // len(to), read without the lock after every call
	mu sync.Mutex   // protects to
	to []BreakerState
	// flushing is held by the one goroutine that reports changes, so that
	// reports keep the order of the changes: two flushers each taking a
	// batch could report "open" after a later "closed", leaving the
	// breaker gauge at open while the breaker is closed.
	flushing sync.Mutex
}

func (c *breakerChanges) add(s BreakerState) {
	c.mu.Lock()
	c.to = append(c.to, s)
	c.n.Store(int32(len(c.to)))
	c.mu.Unlock()
}

func (c *breakerChanges) take() []BreakerState {
	if c.n.Load() == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	to := c.to
	c.to = nil
	c.n.Store(0)
	return to
}

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// redisBudget is how long a caller may still wait on Redis; every call
// spends from it.
type redisBudget struct{ left time.Duration }

// nodeBreakers are a Loader's breakers on a Redis Cluster: one per master,
// so that a master that fails (until its replica is promoted) trips only
// the calls for its slots, and the others keep answering from Redis. Calls
// that span masters (GetMany's pipelines, batches of queued invalidations)
// go through the Loader's own breaker.
type nodeBreakers struct {
	cc *redis.ClusterClient
	m  sync.Map // master address → *breaker
	// reported is the state last counted and logged: the most severe
	// state among the breakers (see flushNodeBreakerChanges).
	reported atomic.Int32
	// mapped is set once the client has found a key's master: it has
	// loaded the slot map, and finding masters no longer calls Redis.
	mapped atomic.Bool
}

// breakerFor returns the breaker of calls about rkey: on a Redis Cluster
// the breaker of rkey's master, else (or when rkey is "", or its master is
// not known) the Loader's. Until the client has loaded the cluster's slot
// map, finding a master asks the cluster: that is bounded by, and spent
// from, b.
func (l *Loader[T]) breakerFor(ctx context.Context, b *redisBudget, rkey string) *breaker {
	if l.nodes == nil || rkey == "" {
		return l.breaker
	}
	var (
		node *redis.Client
		err  error
	)
	if l.nodes.mapped.Load() {
		node, err = l.nodes.cc.MasterForKey(ctx, rkey)
	} else {
		if b.left <= 0 {
			return l.breaker
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, b.left)
		node, err = l.nodes.cc.MasterForKey(cctx, rkey)
		cancel()
		b.left -= time.Since(start)
		if err == nil {
			l.nodes.mapped.Store(true)
		}
	}
	if err != nil {
		return l.breaker
	}
	addr := node.Options().Addr
	if br, ok := l.nodes.m.Load(addr); ok {
		return br.(*breaker)
	}
	br, _ := l.nodes.m.LoadOrStore(addr, newBreaker(l.name+"@"+addr, &l.s, &l.breakerChanges))
	return br.(*breaker)
}

// masterOf returns the address of rkey's master on a Redis Cluster whose
// slot map the client has loaded; "" otherwise.
func (l *Loader[T]) masterOf(ctx context.Context, rkey string) string {
	if l.nodes == nil || !l.nodes.mapped.Load() {
		return ""
	}
	node, err := l.nodes.cc.MasterForKey(ctx, rkey)
	if err != nil {
		return ""
	}
	return node.Options().Addr
}

// redisCallKey is redisCall for a call about rkey alone: on a Redis
// Cluster it goes through the breaker of rkey's master.
func (l *Loader[T]) redisCallKey(ctx context.Context, b *redisBudget, rkey string, fn func(ctx context.Context) error) error {
	return l.call(ctx, b, l.breakerFor(ctx, b, rkey), fn)
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

// redisCall runs fn, one Redis call, through the breaker, bounded by what
// is left of b, and spends the time it took from b. It returns
// ErrRedisUnavailable, without calling fn, while the breaker is open or b
// is spent; it counts Redis failures.
func (l *Loader[T]) redisCall(ctx context.Context, b *redisBudget, fn func(ctx context.Context) error) error {
	return l.call(ctx, b, l.breaker, fn)
}

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
		if l.pending.n.Load() > 0 || l.leftovers.n.Load() > 0 {
			l.nudgeRetrier()
		}
	case !answered(err) && !callerLeft(err):
		l.reloadTopology(ctx)
	}
	return err
}

const (
	// topologyReloadEvery rate-limits the slot map reloads that failed
	// calls on a Redis Cluster client ask for, per Loader.
	topologyReloadEvery = 250 * time.Millisecond
)

// reloadTopology asks a Redis Cluster client to reload its slot map, at
// most once per topologyReloadEvery; calls that failed for want of an
// answer (not error replies, not callers leaving) and calls skipped by the
// open breaker ask for it. A master that crashed sends no MOVED, so without
// this go-redis would go on calling its dead address for the failed-over
// slots until its ClusterStateReloadInterval (60s by default) runs out. The
// reload is lazy (go-redis runs it on a goroutine of its own, one at a
// time, asking the known nodes in turn for CLUSTER SLOTS), so it costs the
// caller nothing; until the replica is promoted it finds the old map, and
// the next failure asks again.
func (l *Loader[T]) reloadTopology(ctx context.Context) {
	if l.reloadState == nil {
		return
	}
	now := int64(l.elapsed())
	last := l.lastReload.Load()
	if now-last < int64(topologyReloadEvery) || !l.lastReload.CompareAndSwap(last, now) {
		return
	}
	l.reloadState(context.WithoutCancel(ctx))
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

// callerLeft reports whether err marks a call cut short by its caller.
func callerLeft(err error) bool {
	var gone callerGone
	return errors.As(err, &gone)
}

// BreakerState returns the current state of the circuit breaker
// (BreakerClosed when it is disabled). On a Redis Cluster, where each
// master has a breaker of its own, it is the most severe of their states:
// open while any master's breaker is open.
func (l *Loader[T]) BreakerState() BreakerState {
	s := l.worstBreakerState()
	l.flushBreakerChanges()
	return s
}

func (l *Loader[T]) worstBreakerState() BreakerState {
	if l.breaker == nil {
		return BreakerClosed
	}
	worst := l.breaker.state()
	if l.nodes != nil {
		l.nodes.m.Range(func(_, br any) bool {
			worst = max(worst, br.(*breaker).state())
			return true
		})
	}
	return worst
}

// flushBreakerChanges reports queued state changes: counts them, logs them
// and wakes the invalidation retrier when Redis may be back.
func (l *Loader[T]) flushBreakerChanges() {
	if l.nodes != nil {
		l.flushNodeBreakerChanges()
		return
	}
	// A flusher that finds another at work leaves its changes to it: the
	// one at work looks for more after it lets go of flushing.
	for l.breakerChanges.n.Load() > 0 {
		if !l.breakerChanges.flushing.TryLock() {
			return
		}
		for _, to := range l.breakerChanges.take() {
			l.reportBreaker(to)
		}
		l.breakerChanges.flushing.Unlock()
	}
}

// flushNodeBreakerChanges is flushBreakerChanges on a Redis Cluster: the
// events and logs follow the most severe state of the masters' breakers
// (so cache_breaker_state reads "open" while any is), reported only when
// it changes. One flusher at a time computes and reports, so that reports
// keep the order of the states; a flusher that finds another at work
// leaves its changes to it (as does a Recorder or Logger that asks for
// the breaker's state while being told of a change).
func (l *Loader[T]) flushNodeBreakerChanges() {
	for l.breakerChanges.n.Load() > 0 {
		if !l.breakerChanges.flushing.TryLock() {
			return
		}
		if len(l.breakerChanges.take()) > 0 {
			worst := l.worstBreakerState() // may queue changes: the loop takes them
			if BreakerState(l.nodes.reported.Swap(int32(worst))) != worst {
				l.reportBreaker(worst)
			}
			l.wakeRetrier() // a master's breaker moved: the queue may land
		}
		l.breakerChanges.flushing.Unlock()
	}
}

// reportBreaker counts and logs a change of the breaker's state to to.
func (l *Loader[T]) reportBreaker(to BreakerState) {
	switch to {
	case BreakerOpen:
		l.count(EventBreakerOpen)
		l.s.logger.Warn("cache: circuit breaker open: Get answers from the database", "loader", l.name)
		l.startProber()
	case BreakerHalfOpen:
		l.count(EventBreakerHalfOpen)
	case BreakerClosed:
		l.count(EventBreakerClosed)
		l.s.logger.Info("cache: circuit breaker closed: Redis is back", "loader", l.name)
	}
	l.wakeRetrier()
}
