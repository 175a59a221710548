package local

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// InvalidateChannel is where Redis delivers the invalidations of a
// CLIENT TRACKING client redirected to a RESP2 connection.
const InvalidateChannel = "__redis__:invalidate"

const (
	// DefaultInterval is the period of background barriers (and of the
	// barrier-timeout check) when StreamOptions.Interval is zero.
	DefaultInterval = 100 * time.Millisecond
	// DefaultTimeout is how long a barrier may take before the stream is
	// declared broken, when StreamOptions.Timeout is zero.
	DefaultTimeout = time.Second

	// RoleInterval is the period of the check that the stream's server is
	// still a master (see Stream.checkRole).
	RoleInterval = 100 * time.Millisecond

	minBackoff = 10 * time.Millisecond
	maxBackoff = time.Second
)

// ErrDown is returned by Wait while the stream is not subscribed, or when
// it broke before the barrier returned: the tier cannot be trusted, read
// Redis.
var ErrDown = errors.New("local: invalidation stream is down")

// StreamOptions configures a Stream.
type StreamOptions struct {
	// Redis are the options of the master whose keys the stream covers.
	// They are copied: the stream's own client speaks RESP2 (Protocol 2)
	// and runs CLIENT TRACKING after any OnConnect of these options.
	// Required.
	Redis *redis.Options
	// Prefixes are the key prefixes tracked (BCAST PREFIX). No prefix may
	// be a prefix of another (Redis refuses overlapping prefixes).
	// Required.
	Prefixes []string
	// Sink receives the invalidations. Required.
	Sink Sink
	// Name is the connection's CLIENT SETNAME, so that CLIENT LIST (and
	// cachectl health) can tell the stream's connections apart. Redis
	// refuses spaces and newlines in a name: they are replaced by '_'.
	// default: none
	Name string
	// Interval is the period of background barriers while Fresh is being
	// called (bounded staleness needs one at least every MaxLag/2), and of
	// the check that breaks a stream whose barrier does not return.
	// default: DefaultInterval
	Interval time.Duration
	// Timeout is how long a barrier may stay unanswered before the
	// connection is closed as broken (flush, reconnect).
	// default: DefaultTimeout
	Timeout time.Duration
	// MaxWait bounds how long Wait waits, from when the caller arrived:
	// one timer per barrier round, shared by its waiters, instead of a
	// context deadline per caller.
	// default: 0 (only the caller's ctx bounds Wait)
	MaxWait time.Duration
	// OnBarrier, if set, is called with the latency of each barrier that
	// returned (from its PING to its return), on the receive loop: it
	// must be fast.
	// default: none
	OnBarrier func(time.Duration)

	// onMessage, if set (by tests), runs on the receive loop before a
	// message's keys are applied.
	onMessage func(keys []string)
}

// Stream is one master's ordered invalidation stream and its barriers.
//
// A dedicated RESP2 connection enables CLIENT TRACKING ... REDIRECT <its
// own id> BCAST PREFIX <prefixes>, then SUBSCRIBEs to InvalidateChannel.
// Redis then writes a message for every change of a key under a prefix
// (writes, scripts, expiry, eviction) into that connection's output buffer
// before the writer's reply leaves, and replies on one connection stay in
// order: a PING sent on it returns after every invalidation of a write
// that completed before the PING was sent. A returned PING is a barrier.
//
// Every receive error (a killed connection, an output-buffer disconnect,
// a restart, a FLUSHALL's nil payload, a barrier unanswered for Timeout)
// flushes the Sink, which refuses every fill begun before, and the stream
// reconnects with a new connection; until it is subscribed again Begin
// hands out refused Tickets, Wait fails and Fresh is false.
//
// Only a master's barriers prove anything: a replica applies its master's
// writes late. The stream subscribes only on a server whose HELLO says
// master, and checks every RoleInterval that the server it is subscribed
// to still is one (a failover demotes the old master without closing its
// connections); when it is not, the connection is broken as above.
type Stream struct {
	sink   Sink
	addr   string // StreamOptions.Redis.Addr
	client *redis.Client
	// check is a plain client of the same server, for the role check
	// (see checkRole).
	check    *redis.Client
	interval time.Duration
	timeout  time.Duration
	maxWait  time.Duration
	onMsg    func(keys []string)
	onRet    func(time.Duration)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}

	mu sync.Mutex // protects the fields below
	// ps is the current connection's subscription; nil while none.
	ps     *redis.PubSub
	closed bool
	// inflight is the barrier sent and not yet returned; next collects
	// the waiters that arrived after inflight was sent, and is sent when
	// inflight returns. Both belong to ps.
	inflight, next *round
	rounds         uint64 // numbers barriers, as their PING payload

	// subscribed is set once the current connection's SUBSCRIBE is
	// confirmed, cleared (before the flush) when it breaks.
	subscribed atomic.Bool
	// lastSent is when (monotonic ns, see now) the last barrier returned
	// on the current connection was sent; 0: none yet.
	lastSent atomic.Int64
	// used is set by Fresh, cleared by each background barrier.
	used atomic.Bool
	// clientID is the Redis client id of the latest connection.
	clientID atomic.Int64
	// serverAddr is the server's address (CLIENT INFO laddr) as the
	// latest connection saw it.
	serverAddr atomic.Pointer[string]

	messages, keys, barriers, waits, waitsFailed atomic.Uint64
	breaks, subscriptions, barrierNanos, rets    atomic.Uint64
	roleFailures                                 atomic.Uint64
}

// round is one barrier: its waiters wait on done; ok is written before
// done is closed. expired (nil without MaxWait) is closed MaxWait after
// the round was created, which is no earlier than any of its waiters
// arrived.
type round struct {
	n       uint64
	sent    int64
	done    chan struct{}
	ok      bool
	expired chan struct{}
	timer   *time.Timer
}

// start is the origin of now: a monotonic clock in nanoseconds, never 0.
var start = time.Now()

func now() int64 { return int64(time.Since(start)) + 1 }

// NewStream starts a Stream: it connects, subscribes and keeps the
// subscription up until Close.
func NewStream(opts StreamOptions) (*Stream, error) {
	if opts.Redis == nil || opts.Sink == nil || len(opts.Prefixes) == 0 {
		return nil, errors.New("local: a stream needs Redis options, a Sink and prefixes")
	}
	for i, p := range opts.Prefixes {
		for j, q := range opts.Prefixes {
			if i != j && len(p) <= len(q) && q[:len(p)] == p {
				return nil, errors.New("local: overlapping tracking prefixes " + strconv.Quote(p) + " and " + strconv.Quote(q))
			}
		}
	}
	s := &Stream{
		addr:     opts.Redis.Addr,
		sink:     opts.Sink,
		interval: opts.Interval,
		timeout:  opts.Timeout,
		maxWait:  opts.MaxWait,
		onMsg:    opts.onMessage,
		onRet:    opts.OnBarrier,
		kick:     make(chan struct{}, 1),
	}
	if s.interval <= 0 {
		s.interval = DefaultInterval
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	o := *opts.Redis
	o.Protocol = 2 // RESP3 would deliver invalidations as pushes
	if opts.Name != "" {
		o.ClientName = ClientName(opts.Name)
	}
	userOnConnect := o.OnConnect
	track := []any{"CLIENT", "TRACKING", "on", "REDIRECT", nil, "BCAST"}
	for _, p := range opts.Prefixes {
		track = append(track, "PREFIX", p)
	}
	o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		if userOnConnect != nil {
			if err := userOnConnect(ctx, cn); err != nil {
				return err
			}
		}
		// A stream on a replica would prove nothing: writes land on the
		// master and reach a replica late (or, while it has not yet been
		// told of a failover, never). Refuse to subscribe but on a master.
		if err := checkMaster(ctx, cn); err != nil {
			return err
		}
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		addr, err := serverAddr(ctx, cn)
		if err != nil {
			return err
		}
		s.serverAddr.Store(&addr)
		args := append([]any(nil), track...)
		args[4] = id // redirected to this connection itself
		if err := cn.Do(ctx, args...).Err(); err != nil {
			return err
		}
		s.clientID.Store(id)
		return nil
	}
	s.client = redis.NewClient(&o)
	// The role check's client: the same server options without the
	// tracking, one connection.
	c := *opts.Redis
	c.Protocol = 2
	c.PoolSize, c.MinIdleConns, c.MaxIdleConns = 1, 0, 1
	s.check = redis.NewClient(&c)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.run() }()
	go func() { defer s.wg.Done(); s.tick() }()
	go func() { defer s.wg.Done(); s.roleLoop() }()
	return s, nil
}

// ClientName is name as Redis accepts it in CLIENT SETNAME: every byte
// outside '!'..'~' replaced by '_'.
func ClientName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c < '!' || c > '~' {
			b[i] = '_'
		}
	}
	return string(b)
}

// Begin returns the Ticket for a Redis read about to be sent: refused
// while the stream is not subscribed. The Sink's state is read before the
// stream's: a break in between leaves the Ticket with the old epoch, which
// Fill refuses.
func (s *Stream) Begin() Ticket {
	t := s.sink.Ticket()
	if !s.subscribed.Load() {
		return Ticket{}
	}
	return t
}

// Wait returns nil once a barrier sent after Wait was called has
// returned: every invalidation of a write that completed before the call
// has then been applied to the Sink. One barrier serves every caller
// waiting for it. It fails with ErrDown when the stream is down or breaks
// first, or when MaxWait runs out, or with ctx's error.
func (s *Stream) Wait(ctx context.Context) error {
	s.waits.Add(1)
	r := s.barrier(true)
	if r == nil {
		s.waitsFailed.Add(1)
		return ErrDown
	}
	return s.await(ctx, r)
}

// await waits for r, a round of s, as Wait does.
func (s *Stream) await(ctx context.Context, r *round) error {
	select {
	case <-r.done:
		if !r.ok {
			s.waitsFailed.Add(1)
			return ErrDown
		}
		return nil
	case <-r.expired: // nil without MaxWait: never
		s.waitsFailed.Add(1)
		return ErrDown
	case <-ctx.Done():
		s.waitsFailed.Add(1)
		return ctx.Err()
	}
}

// Fresh reports whether the last barrier that returned was sent less than
// maxLag ago: every invalidation of a write that completed more than
// maxLag before this call has then been applied. While it is called the
// stream sends a barrier every Interval; when it answers false it asks
// for one at once.
func (s *Stream) Fresh(maxLag time.Duration) bool {
	if !s.used.Load() {
		s.used.Store(true)
	}
	if last := s.lastSent.Load(); last != 0 && now()-last < int64(maxLag) {
		return true
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return false
}

// Up reports whether the stream is subscribed and a barrier has returned
// on its current connection.
func (s *Stream) Up() bool { return s.subscribed.Load() && s.lastSent.Load() != 0 }

// barrier returns the round a caller can wait for: a new one sent now if
// none is in flight, else (waiter) the next one, sent when the one in
// flight returns. It returns nil while the stream is down, and (not
// waiter) when one is already in flight.
func (s *Stream) barrier(waiter bool) *round {
	s.mu.Lock()
	if s.ps == nil || !s.subscribed.Load() {
		s.mu.Unlock()
		return nil
	}
	if s.inflight == nil {
		r := s.newRound()
		r.sent = now()
		s.inflight = r
		ps := s.ps
		s.mu.Unlock()
		s.send(ps, r)
		return r
	}
	if !waiter {
		s.mu.Unlock()
		return nil
	}
	if s.next == nil {
		s.next = s.newRound()
	}
	r := s.next
	s.mu.Unlock()
	return r
}

// newRound numbers a round and starts its MaxWait timer; s.mu is held.
func (s *Stream) newRound() *round {
	s.rounds++
	r := &round{n: s.rounds, done: make(chan struct{})}
	if s.maxWait > 0 {
		r.expired = make(chan struct{})
		r.timer = time.AfterFunc(s.maxWait, func() { close(r.expired) })
	}
	return r
}

// finish completes r (ok: its barrier returned); only its owner calls it,
// once.
func (r *round) finish(ok bool) {
	if r.timer != nil {
		r.timer.Stop()
	}
	r.ok = ok
	close(r.done)
}

// send writes r's PING; a failed write breaks the connection.
func (s *Stream) send(ps *redis.PubSub, r *round) {
	s.barriers.Add(1)
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if err := ps.Ping(ctx, strconv.FormatUint(r.n, 10)); err != nil {
		ps.Close() // the receive loop sees the error and flushes
	}
}

// returned completes the barrier whose PING payload came back, and sends
// the next one if callers wait for it. The receive loop calls it after
// applying every message received before the pong.
func (s *Stream) returned(payload string) {
	n, err := strconv.ParseUint(payload, 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	r := s.inflight
	if r == nil || r.n != n {
		s.mu.Unlock()
		return
	}
	s.lastSent.Store(r.sent)
	s.inflight = nil
	next := s.next
	if next != nil {
		s.next = nil
		next.sent = now()
		s.inflight = next
	}
	ps := s.ps
	s.mu.Unlock()
	d := now() - r.sent
	s.barrierNanos.Add(uint64(d))
	s.rets.Add(1)
	r.finish(true)
	if next != nil {
		s.send(ps, next)
	}
	if s.onRet != nil {
		s.onRet(time.Duration(d))
	}
}

// run keeps a subscription up until Close: subscribe, receive until an
// error, flush, back off, again.
func (s *Stream) run() {
	backoff := minBackoff
	for {
		ps := s.client.Subscribe(s.ctx, InvalidateChannel)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			ps.Close()
			return
		}
		s.ps = ps
		s.mu.Unlock()
		wasUp := s.receive(ps)
		s.fail(ps, wasUp)
		if wasUp {
			backoff = minBackoff
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// receive applies what ps delivers, in order, until an error; it reports
// whether the subscription was confirmed.
func (s *Stream) receive(ps *redis.PubSub) (wasUp bool) {
	for {
		// A FLUSHALL arrives with a nil payload, which go-redis reports
		// as an error: flushing is then the right answer too.
		msg, err := ps.Receive(s.ctx)
		if err != nil {
			return wasUp
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == InvalidateChannel {
				// SUBSCRIBE was processed after CLIENT TRACKING (OnConnect
				// waited for its reply): a write Redis processes from now
				// on is delivered here, one processed before is visible to
				// any read sent from now on.
				wasUp = true
				s.subscriptions.Add(1)
				s.subscribed.Store(true)
				s.barrier(false) // Up once it returns
			}
		case *redis.Message:
			if m.Channel != InvalidateChannel {
				continue
			}
			keys := m.PayloadSlice
			if keys == nil {
				keys = []string{m.Payload}
			}
			if s.onMsg != nil {
				s.onMsg(keys)
			}
			s.messages.Add(1)
			s.keys.Add(uint64(len(keys)))
			s.sink.Invalidate(keys...)
		case *redis.Pong:
			s.returned(m.Payload)
		}
	}
}

// fail ends a connection: the stream is marked down before the Sink is
// flushed (see Begin), its barriers fail, and ps is closed.
func (s *Stream) fail(ps *redis.PubSub, wasUp bool) {
	s.mu.Lock()
	s.subscribed.Store(false)
	s.lastSent.Store(0)
	rs := []*round{s.inflight, s.next}
	s.inflight, s.next = nil, nil
	if s.ps == ps {
		s.ps = nil
	}
	s.mu.Unlock()
	if wasUp {
		s.sink.Flush()
		s.breaks.Add(1)
	}
	for _, r := range rs {
		if r != nil {
			r.finish(false)
		}
	}
	ps.Close()
}

// tick sends a barrier every interval while Fresh is called (or at once
// when Fresh asks), and breaks a connection whose barrier is overdue.
func (s *Stream) tick() {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		kicked := false
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
			kicked = true
		}
		s.mu.Lock()
		r, ps := s.inflight, s.ps
		s.mu.Unlock()
		if r != nil && ps != nil && now()-r.sent > int64(s.timeout) {
			ps.Close() // the receive loop sees the error and flushes
			continue
		}
		if s.used.Swap(false) || kicked {
			s.barrier(false)
		}
	}
}

// roleLoop runs checkRole every RoleInterval while the stream is
// subscribed, and breaks the connection when it fails.
func (s *Stream) roleLoop() {
	t := time.NewTicker(RoleInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		ps := s.ps
		s.mu.Unlock()
		if ps == nil || !s.subscribed.Load() {
			continue
		}
		if err := s.checkRole(); err != nil {
			s.roleFailures.Add(1)
			ps.Close() // flush, and reconnect (to the new master, if the options find it)
		}
	}
}

// ErrNotMaster is why a stream refuses (or leaves) a server that is not a
// master: its barriers would not cover the writes of the master.
var ErrNotMaster = errors.New("local: the stream's server is not a master")

// checkRole reports whether the server of the current connection is still
// a master: ROLE and CLIENT INFO on the check client, which must reach the
// same server (a failover's Dialer may find another). A failover demotes
// the old master, which keeps its connections and from then on applies
// the new master's writes late (replication), so its barriers prove
// nothing; this check, every Interval, is what notices. Between the
// promotion of a replica and the demotion of the old master, Redis itself
// has two masters; no check can do better than learn of it from Redis.
func (s *Stream) checkRole() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	cn := s.check.Conn()
	defer cn.Close()
	if err := checkMaster(ctx, cn); err != nil {
		return err
	}
	addr, err := serverAddr(ctx, cn)
	if err != nil {
		return err
	}
	if want := s.serverAddr.Load(); want == nil || *want != addr {
		return ErrNotMaster // another server: the failover moved on
	}
	return nil
}

// checkMaster fails unless cn's server says, in its HELLO reply, that it
// is a master. HELLO (unlike ROLE and INFO) needs no @admin or @dangerous
// ACL permission.
func checkMaster(ctx context.Context, cn *redis.Conn) error {
	hello, err := cn.Do(ctx, "HELLO", "2").Slice()
	if err != nil {
		return err
	}
	for i := 0; i+1 < len(hello); i += 2 {
		if hello[i] == "role" {
			if hello[i+1] != "master" {
				return ErrNotMaster
			}
			return nil
		}
	}
	return errors.New("local: HELLO without a role")
}

// serverAddr is the server's own address as cn sees it (CLIENT INFO
// laddr).
func serverAddr(ctx context.Context, cn *redis.Conn) (string, error) {
	info, err := cn.Do(ctx, "CLIENT", "INFO").Text()
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(info) {
		if a, ok := strings.CutPrefix(f, "laddr="); ok {
			return a, nil
		}
	}
	return "", errors.New("local: CLIENT INFO without laddr")
}

// Close stops the stream and closes its connection. The Sink is left as
// it is.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ps := s.ps
	s.mu.Unlock()
	s.cancel()
	if ps != nil {
		ps.Close()
	}
	s.wg.Wait()
	s.check.Close()
	return s.client.Close()
}

// StreamStats are a Stream's counters and gauges.
type StreamStats struct {
	Up            bool          // subscribed, and a barrier returned on this connection
	Lag           time.Duration // how long ago the last returned barrier was sent (0 when none)
	Messages      uint64        // invalidation messages received
	Keys          uint64        // keys they named
	Barriers      uint64        // barrier PINGs sent
	Returned      uint64        // barriers that returned
	BarrierNanos  uint64        // total time from sending a returned barrier to its return
	Waits         uint64        // Wait calls
	WaitsFailed   uint64        // Wait calls answered with an error
	Breaks        uint64        // connections lost after being subscribed (each flushed the Sink)
	Subscriptions uint64        // subscriptions confirmed
	RoleFailures  uint64        // role checks that found the server no longer the master (or failed), each of which broke the connection
}

// Stats returns the Stream's counters.
func (s *Stream) Stats() StreamStats {
	st := StreamStats{
		Up:            s.Up(),
		Messages:      s.messages.Load(),
		Keys:          s.keys.Load(),
		Barriers:      s.barriers.Load(),
		Returned:      s.rets.Load(),
		BarrierNanos:  s.barrierNanos.Load(),
		Waits:         s.waits.Load(),
		WaitsFailed:   s.waitsFailed.Load(),
		Breaks:        s.breaks.Load(),
		Subscriptions: s.subscriptions.Load(),
		RoleFailures:  s.roleFailures.Load(),
	}
	if last := s.lastSent.Load(); last != 0 {
		st.Lag = time.Duration(now() - last)
	}
	return st
}
