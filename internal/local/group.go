package local

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Group is the invalidation streams of every master of a deployment, one
// per master, feeding one Sink. A single Redis server is a Group of one.
//
// The Group is trusted as a whole: Begin hands out a valid Ticket only
// while every stream is subscribed, Wait waits for a barrier on every
// stream, Fresh holds only while every stream is fresh. A Get answered
// from the tier sends nothing to Redis, so the client's map of which
// master holds a key may be arbitrarily old when it is answered; trusting
// every master's stream makes the proof independent of that map: a write
// to the key on any master of the Group was applied before the barrier
// that was awaited. A master that is down, or not yet streamed, therefore
// sends every Get to Redis until the Group is whole again.
//
// Sync changes the set of masters (a failover, a master added). Every
// change flushes the Sink, so no fill whose read was sent before it is
// stored; a master added is trusted once its stream is subscribed.
type Group struct {
	sink Sink
	opts StreamOptions // template: Redis is set per master

	mu      sync.Mutex // serializes Sync and Close
	closed  bool
	streams atomic.Pointer[[]*Stream] // sorted by address; replaced, never modified
	byAddr  map[string]*Stream
	changes atomic.Uint64
	// retired sums the counters of the streams Sync closed, so that the
	// Group's counters never go down.
	retired atomic.Pointer[StreamStats]
}

// NewGroup returns an empty Group; Sync adds its masters. opts are the
// StreamOptions of every stream (Redis is ignored).
func NewGroup(opts StreamOptions) *Group {
	g := &Group{sink: opts.Sink, opts: opts, byAddr: map[string]*Stream{}}
	g.streams.Store(&[]*Stream{})
	g.retired.Store(&StreamStats{})
	return g
}

// Sync makes the Group's streams those of masters (by address): it starts
// a stream for each new address and closes the streams of addresses no
// longer given. When anything changed it reports true and, unless the
// Group was empty, flushes the Sink.
func (g *Group) Sync(masters map[string]*redis.Options) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false, nil
	}
	var gone []*Stream
	for addr, s := range g.byAddr {
		if _, ok := masters[addr]; !ok {
			gone = append(gone, s)
			delete(g.byAddr, addr)
		}
	}
	added := 0
	var err error
	for addr, o := range masters {
		if _, ok := g.byAddr[addr]; ok {
			continue
		}
		so := g.opts
		so.Redis = o
		s, e := NewStream(so)
		if e != nil {
			err = e
			continue
		}
		g.byAddr[addr] = s
		added++
	}
	if added == 0 && len(gone) == 0 {
		return false, err
	}
	wasEmpty := len(*g.streams.Load()) == 0
	addrs := slices.Sorted(maps.Keys(g.byAddr))
	list := make([]*Stream, len(addrs))
	for i, a := range addrs {
		list[i] = g.byAddr[a]
	}
	g.streams.Store(&list)
	// After the new list is visible: a Ticket taken from now on needs the
	// new streams subscribed, one taken before has the old epoch. (An
	// empty Group gave no valid Ticket: nothing to flush.)
	if !wasEmpty {
		g.sink.Flush()
		g.changes.Add(1)
	}
	for _, s := range gone {
		s.Close()
		r := *g.retired.Load()
		r.add(s.Stats())
		r.Lag = 0
		g.retired.Store(&r)
	}
	return true, err
}

// Addrs are the addresses of the Group's masters.
func (g *Group) Addrs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Sorted(maps.Keys(g.byAddr))
}

// Has reports whether addr is one of the Group's masters.
func (g *Group) Has(addr string) bool {
	for _, s := range *g.streams.Load() {
		if s.addr == addr {
			return true
		}
	}
	return false
}

// Begin returns the Ticket for a Redis read about to be sent: refused
// unless every stream of the Group is subscribed (see Stream.Begin).
func (g *Group) Begin() Ticket {
	t := g.sink.Ticket()
	list := *g.streams.Load()
	if len(list) == 0 {
		return Ticket{}
	}
	for _, s := range list {
		if !s.subscribed.Load() {
			return Ticket{}
		}
	}
	return t
}

// Wait returns nil once, on every stream of the Group, a barrier sent
// after Wait was called has returned (see Stream.Wait). The barriers go
// out together; one round of each serves every caller waiting for it.
func (g *Group) Wait(ctx context.Context) error {
	list := *g.streams.Load()
	if len(list) == 1 {
		return list[0].Wait(ctx)
	}
	if len(list) == 0 {
		return ErrDown
	}
	var small [8]*round
	rounds := small[:0]
	for _, s := range list {
		s.waits.Add(1)
		r := s.barrier(true)
		if r == nil {
			s.waitsFailed.Add(1)
			return ErrDown
		}
		rounds = append(rounds, r)
	}
	for i, r := range rounds {
		if err := list[i].await(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// Fresh reports whether every stream of the Group is fresh (see
// Stream.Fresh).
func (g *Group) Fresh(maxLag time.Duration) bool {
	list := *g.streams.Load()
	ok := len(list) > 0
	for _, s := range list {
		if !s.Fresh(maxLag) { // called on each: each is kept fresh while used
			ok = false
		}
	}
	return ok
}

// Up reports whether the Group has streams and every one is up.
func (g *Group) Up() bool {
	list := *g.streams.Load()
	for _, s := range list {
		if !s.Up() {
			return false
		}
	}
	return len(list) > 0
}

// Stats returns the sums of the streams' counters; Up as Group.Up, Lag
// the largest; Changes the number of Syncs that changed the Group,
// Masters its size.
func (g *Group) Stats() GroupStats {
	list := *g.streams.Load()
	st := GroupStats{StreamStats: *g.retired.Load(), Masters: len(list), Changes: g.changes.Load()}
	for _, s := range list {
		st.add(s.Stats())
	}
	st.Up = g.Up()
	return st
}

// add sums o's counters into st; Lag becomes the larger.
func (st *StreamStats) add(o StreamStats) {
	st.Lag = max(st.Lag, o.Lag)
	st.Messages += o.Messages
	st.Keys += o.Keys
	st.Barriers += o.Barriers
	st.Returned += o.Returned
	st.BarrierNanos += o.BarrierNanos
	st.Waits += o.Waits
	st.WaitsFailed += o.WaitsFailed
	st.Breaks += o.Breaks
	st.Subscriptions += o.Subscriptions
	st.RoleFailures += o.RoleFailures
}

// GroupStats are a Group's counters: its streams' summed.
type GroupStats struct {
	StreamStats
	Masters int    // streams in the Group
	Changes uint64 // Syncs that changed the set of masters (each flushed the Sink)
}

// Close closes every stream; the Sink is left as it is, and so are the
// counters of Stats.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	list := *g.streams.Load()
	g.streams.Store(&[]*Stream{})
	g.byAddr = map[string]*Stream{}
	g.mu.Unlock()
	r := *g.retired.Load()
	for _, s := range list {
		s.Close()
		r.add(s.Stats())
	}
	r.Lag = 0
	g.retired.Store(&r) // the counters stay what they were
}
