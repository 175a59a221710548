package cache

import (
	"sync"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"
)

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

// BreakerState returns the current state of the circuit breaker
// (BreakerClosed when it is disabled). On a Redis Cluster, where each
// master has a breaker of its own, it is the most severe of their states:
// open while any master's breaker is open.
func (l *Loader[T]) BreakerState() BreakerState {
	s := l.worstBreakerState()
	l.flushBreakerChanges()
	return s
}

// flushBreakerChanges reports queued state changes: counts them, logs them
// and wakes the invalidation retrier when Redis may be back.
func (l *Loader[T]) flushBreakerChanges() {
	if l.cluster.nodes != nil {
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
