package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
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

// BreakerOptions configure a Breaker shared by Loaders (see NewBreaker).
// The zero value of every field selects its default; a nil
// *BreakerOptions means all defaults.
type BreakerOptions struct {
	// Failures is how many Redis calls in a row must fail (time out, lose
	// their connection) before the breaker opens. The calls are those of
	// every member Loader: a failure of any of them counts, and a success
	// of any of them starts the count again. The meaning is that of
	// Options.BreakerFailures.
	// default: 5
	Failures int

	// Cooldown is how long the breaker stays open before a probe may close
	// it, as Options.BreakerCooldown.
	// default: 150ms
	Cooldown time.Duration
}

// Breaker is a circuit breaker around one Redis that several Loaders
// share: give each Loader of a service that uses one Redis client the same
// Breaker (Options.Breaker) rather than a breaker of its own. Their calls
// then trip it together: after BreakerOptions.Failures failed calls in a
// row, whichever Loaders made them, every member stops calling Redis at
// once, where with a breaker each, 20 Loaders would need 20 times as many
// failures, and would run 20 probers. One prober per Breaker PINGs Redis
// while it is not closed, and its success closes the breaker for every
// member. On a Redis Cluster the Breaker holds one breaker per master,
// shared the same way.
//
// Each member still reports the breaker's state changes as its own: its
// Stats, BreakerState, events (breaker_open, breaker_half_open,
// breaker_closed), Recorder and Logger see every change, in order, as a
// Loader with a breaker of its own does; a Loader that joins a Breaker that
// is not closed reports its state when it joins.
//
// The Breaker stands for the Redis of the client it was made with: New
// refuses a Loader on any other client (even one of the same Redis: give
// the Loaders one client, which also shares its connection pool), because
// the prober PINGs through that client and the per-master breakers follow
// that client's slot map.
//
// A Breaker needs no Close: it runs a goroutine only while it is not
// closed and has members (a Loader is a member from New until its Close).
// Closing a Loader never stops the prober for the others; the last member's
// Close stops it and waits for it. A Breaker whose members have all closed
// may be given to new Loaders. A Breaker is safe for concurrent use.
type Breaker struct {
	rdb   redis.UniversalClient
	fails uint32
	cool  time.Duration
	// core is the breaker of calls not about one Cluster master (all calls
	// on other clients); nodes holds the per-master breakers on a Redis
	// Cluster (nil otherwise).
	core  *breaker
	nodes *nodeBreakers

	// fanMu serializes the fan-out of state changes to the members with
	// joins and leaves, so that a joining member is told of the state it
	// joins in, and of every change after it. It is taken inside
	// gobreaker's lock (OnStateChange): nothing calls gobreaker holding it.
	fanMu sync.Mutex
	// members are the member Loaders, replaced (never modified) under fanMu
	// and mu; read without a lock to report changes.
	members atomic.Pointer[[]*breakerMember]

	// mu protects prober, and serializes joins and leaves; gobreaker may be
	// called holding it.
	mu     sync.Mutex
	prober *proberRun // the running prober; nil when none runs
	// probeTimeout bounds a probe's PING: the longest RedisTimeout among
	// the members.
	probeTimeout atomic.Int64

	// reloadState reloads the slot map of a Redis Cluster client (nil for
	// other clients), at most every topologyReloadEvery (lastReload, time
	// since born) for failed probes.
	reloadState func(ctx context.Context)
	born        time.Time
	lastReload  atomic.Int64
}

// breakerMember is a Loader's membership of a Breaker.
type breakerMember struct {
	changes      *breakerChanges // the Loader's changes not yet reported
	flush        func()          // reports them (Loader.flushOwnBreakerChanges)
	redisTimeout time.Duration   // the Loader's RedisTimeout
}

// proberRun is one run of a Breaker's prober: stop ends it, done is closed
// when it has ended.
type proberRun struct{ stop, done chan struct{} }

// NewBreaker returns a circuit breaker around the Redis of rdb for Loaders
// to share (Options.Breaker): every Loader given it must use rdb itself.
// opts may be nil for defaults.
//
// A Breaker is bound to its client, rather than to the first Loader that
// uses it, so that what it PINGs does not depend on which Loaders were made
// first or are still open, and so that New can refuse a Loader of another
// Redis (which would trip, and be closed by, a Redis that is not its own).
func NewBreaker(rdb redis.UniversalClient, opts *BreakerOptions) (*Breaker, error) {
	if rdb == nil {
		return nil, errors.New("cache: nil Redis client")
	}
	if err := checkClient(rdb); err != nil {
		return nil, err
	}
	if !reflect.TypeOf(rdb).Comparable() {
		return nil, fmt.Errorf("cache: a Breaker needs a client New can compare with its Loaders' clients; %T is not comparable", rdb)
	}
	if opts == nil {
		opts = &BreakerOptions{}
	}
	if opts.Failures < 0 || int64(opts.Failures) > math.MaxUint32 {
		return nil, fmt.Errorf("cache: BreakerOptions.Failures must be in [0, 2^32), got %d", opts.Failures)
	}
	if opts.Cooldown < 0 {
		return nil, fmt.Errorf("cache: BreakerOptions.Cooldown is negative (%v)", opts.Cooldown)
	}
	return newCircuit(rdb, "shared", or(opts.Failures, defaultBreakerFails), or(opts.Cooldown, defaultBreakerCool)), nil
}

// newCircuit returns a Breaker with no members: a shared one, or a
// Loader's own.
func newCircuit(rdb redis.UniversalClient, name string, fails int, cool time.Duration) *Breaker {
	b := &Breaker{rdb: rdb, fails: uint32(fails), cool: cool, born: time.Now()}
	b.members.Store(&[]*breakerMember{})
	b.core = b.newBreaker(name)
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		b.nodes = &nodeBreakers{cc: cc}
	}
	if r, ok := rdb.(interface{ ReloadState(context.Context) }); ok { // *redis.ClusterClient
		b.reloadState = r.ReloadState
	}
	b.lastReload.Store(-int64(topologyReloadEvery))
	return b
}

// sameClient reports whether a and b are the same client.
func sameClient(a, b redis.UniversalClient) bool {
	ta := reflect.TypeOf(a)
	return ta == reflect.TypeOf(b) && ta.Comparable() && a == b
}

// breaker is one circuit breaker around Redis calls (a Breaker's core, or
// one of its Cluster masters'): gobreaker's, with its state mirrored in
// closed, which calls read without its lock, and in state. Calls go
// through it only while it is closed; while it is open or half-open they
// are skipped at once, and the Breaker's prober (probe.go) alone asks
// Redis, so that no Get ever waits on a half-open probe and the breaker
// closes as soon as Redis answers again, not when a caller happens by.
type breaker struct {
	cb     *gobreaker.CircuitBreaker[struct{}]
	closed atomic.Bool
	mirror atomic.Int32 // BreakerState as of its last change
}

// newBreaker returns a breaker of b. Its state changes are queued on every
// member's breakerChanges, to be reported outside the breaker's lock (see
// flushBreakerChanges); starting the prober is one such report.
func (b *Breaker) newBreaker(name string) *breaker {
	br := &breaker{}
	br.closed.Store(true)
	fails := b.fails
	br.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     b.cool,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= fails },
		IsSuccessful: func(err error) bool {
			return err == nil || answered(err)
		},
		IsExcluded: func(err error) bool {
			return err != nil && callerLeft(err)
		},
		OnStateChange: func(_ string, _, to gobreaker.State) {
			s := breakerState(to)
			br.closed.Store(s == BreakerClosed)
			br.mirror.Store(int32(s))
			b.fanOut(s)
		},
	})
	return br
}

// state returns the breaker's state (moving it from open to half-open when
// its cooldown has passed).
func (br *breaker) state() BreakerState { return breakerState(br.cb.State()) }

// fanOut queues a state change on every member.
func (b *Breaker) fanOut(to BreakerState) {
	b.fanMu.Lock()
	for _, m := range *b.members.Load() {
		m.changes.add(to)
	}
	b.fanMu.Unlock()
}

// join makes m a member. A Breaker that is not closed queues its state on
// m, so that m reports the state it joins in.
func (b *Breaker) join(m *breakerMember) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fanMu.Lock()
	old := *b.members.Load()
	ms := append(old[:len(old):len(old)], m)
	b.members.Store(&ms)
	if s := b.mirrored(); s != BreakerClosed {
		m.changes.add(s)
	}
	b.fanMu.Unlock()
	b.setProbeTimeout(ms)
}

// leave ends m's membership: m is told of no more changes. The last
// member's leave stops the prober and waits for it.
func (b *Breaker) leave(m *breakerMember) {
	b.mu.Lock()
	b.fanMu.Lock()
	old := *b.members.Load()
	i := slices.Index(old, m)
	if i < 0 {
		b.fanMu.Unlock()
		b.mu.Unlock()
		return
	}
	ms := slices.Delete(slices.Clone(old), i, i+1)
	b.members.Store(&ms)
	b.fanMu.Unlock()
	b.setProbeTimeout(ms)
	var p *proberRun
	if len(ms) == 0 && b.prober != nil {
		p = b.prober
		b.prober = nil
		close(p.stop)
	}
	b.mu.Unlock()
	if p != nil {
		<-p.done
	}
	m.changes.retire()
}

// setProbeTimeout sets the probe's timeout to the longest RedisTimeout of
// ms: a PING that one member would wait for says that Redis serves, and
// members whose calls still time out trip the breaker again. With no
// members it keeps the last.
func (b *Breaker) setProbeTimeout(ms []*breakerMember) {
	var d time.Duration
	for _, m := range ms {
		d = max(d, m.redisTimeout)
	}
	if d > 0 {
		b.probeTimeout.Store(int64(d))
	}
}

// mirrored returns the most severe state of b's breakers as of their last
// changes, without moving any from open to half-open.
func (b *Breaker) mirrored() BreakerState {
	worst := BreakerState(b.core.mirror.Load())
	if b.nodes != nil {
		b.nodes.m.Range(func(_, br any) bool {
			worst = max(worst, BreakerState(br.(*breaker).mirror.Load()))
			return true
		})
	}
	return worst
}

// worst returns the most severe state of b's breakers.
func (b *Breaker) worst() BreakerState {
	worst := b.core.state()
	if b.nodes != nil {
		b.nodes.m.Range(func(_, br any) bool {
			worst = max(worst, br.(*breaker).state())
			return true
		})
	}
	return worst
}

// flush has every member report its queued changes.
func (b *Breaker) flush() {
	for _, m := range *b.members.Load() {
		m.flush()
	}
}

// State returns the breaker's state: on a Redis Cluster, the most severe
// of its masters' breakers' states. Every member's BreakerState returns
// the same.
func (b *Breaker) State() BreakerState {
	s := b.worst()
	b.flush()
	return s
}

// breakerChanges queues the breaker's state changes for one Loader.
// gobreaker reports them with its lock held; a Recorder or Logger called
// there that asked for the breaker's state would deadlock, so they are
// reported after the call.
type breakerChanges struct {
	n  atomic.Int32 // len(to), read without the lock after every call
	mu sync.Mutex   // protects to
	to []BreakerState
	// flushing is held by the one goroutine that reports changes, so that
	// reports keep the order of the changes: two flushers each taking a
	// batch could report "open" after a later "closed", leaving the
	// breaker gauge at open while the breaker is closed. It protects last
	// and left.
	flushing sync.Mutex
	last     BreakerState // the state last reported
	left     bool         // the Loader left the Breaker: nothing more is reported
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

// retire drops the queued changes and stops the reports, once a report
// under way has ended.
func (c *breakerChanges) retire() {
	c.flushing.Lock()
	c.left = true
	c.take()
	c.flushing.Unlock()
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
// open while any master's breaker is open. With a shared Breaker it is the
// Breaker's State.
func (l *Loader[T]) BreakerState() BreakerState {
	if l.brk == nil {
		return BreakerClosed
	}
	s := l.brk.worst()
	l.flushBreakerChanges()
	return s
}

// flushBreakerChanges reports queued state changes, when there are: every
// member of the Breaker (this Loader's own breaker's only member, the
// Loader) reports its own.
func (l *Loader[T]) flushBreakerChanges() {
	if l.breakerChanges.n.Load() > 0 {
		l.brk.flush()
	}
}

// flushOwnBreakerChanges reports the Loader's queued state changes: counts
// them, logs them and wakes the invalidation retrier when Redis may be
// back. A state the Loader last reported is not reported again. On a Redis
// Cluster the events and logs follow the most severe state of the masters'
// breakers (so cache_breaker_state reads "open" while any is), reported
// only when it changes.
func (l *Loader[T]) flushOwnBreakerChanges() {
	c := &l.breakerChanges
	// A flusher that finds another at work leaves its changes to it: the
	// one at work looks for more after it lets go of flushing. (So does a
	// Recorder or Logger that asks for the breaker's state while being
	// told of a change.)
	for c.n.Load() > 0 {
		if !c.flushing.TryLock() {
			return
		}
		to := c.take()
		switch {
		case c.left:
		case l.brk.nodes != nil:
			if len(to) > 0 {
				worst := l.brk.worst() // may queue changes: the loop takes them
				if worst != c.last {
					c.last = worst
					l.reportBreaker(worst)
				}
				l.wakeRetrier() // a master's breaker moved: the queue may land
			}
		default:
			for _, s := range to {
				if s != c.last {
					c.last = s
					l.reportBreaker(s)
				}
			}
		}
		c.flushing.Unlock()
	}
}

// reportBreaker counts and logs a change of the breaker's state to to.
func (l *Loader[T]) reportBreaker(to BreakerState) {
	switch to {
	case BreakerOpen:
		l.count(EventBreakerOpen)
		l.s.logger.Warn("cache: circuit breaker open: Get answers from the database", "loader", l.name)
		l.brk.startProber()
	case BreakerHalfOpen:
		l.count(EventBreakerHalfOpen)
	case BreakerClosed:
		l.count(EventBreakerClosed)
		l.s.logger.Info("cache: circuit breaker closed: Redis is back", "loader", l.name)
	}
	l.wakeRetrier()
}
