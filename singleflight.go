package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// result is what one flight produced, with what a caller needs to decide
// whether it may take it (see flightGroup.do).
type result[T any] struct {
	val T
	err error
	// seq is the Loader's local sequence number taken just before the Redis
	// call or load that produced val was issued.
	seq uint64
	// gen is the entry generation val is known to be current at: the
	// generation of the lease grant, or of the entry val was read from.
	// 0 when unknown (Redis unreachable).
	gen int64
}

// flight is one load in progress for one key.
type flight[T any] struct {
	done chan struct{} // closed when res is set
	res  result[T]
	// grantGen is the generation the flight's lease was granted at, stored
	// as soon as it is known so that callers can skip a flight that is
	// already too old for them without waiting for it.
	grantGen atomic.Int64
}

// flightGroup runs at most one flight per key at a time for callers that
// may share it, like x/sync/singleflight, but generic, with waiters that
// leave on their own context, and with a freshness rule: a caller only takes
// a result that is at least as new as what it observed before asking.
type flightGroup[T any] struct {
	mu sync.Mutex // protects m
	m  map[string]*flight[T]
}

// caller describes what one Get observed before it asked for a flight.
type caller struct {
	seq uint64 // local sequence taken before the Get's first Redis read
	gen int64  // generation that read returned; 0 when unknown
}

// accepts reports whether a caller may take r. Anything issued after the
// caller's first read reflects every invalidation completed before the Get
// began; a result from a lease granted at (or an entry read at) a generation
// no older than the one the caller saw does too, since generations only grow.
// Failures other than "not found" carry no data and are taken as they are.
func accepts[T any](c caller, r *result[T]) bool {
	if r.err != nil && !errors.Is(r.err, ErrNotFound) {
		return true
	}
	return r.seq > c.seq || (c.gen != 0 && r.gen >= c.gen)
}

// do returns the result of a flight for key that c accepts, starting one
// with run when none is in progress or the one in progress is too old for
// c. run executes on its own goroutine (started through spawn), so a
// caller whose ctx ends leaves at once with ctx.Err() while the flight goes
// on for the others. shared reports whether the result came from a flight
// another caller started.
//
// run returns the result and, optionally, a step to take after the result
// is published (storing it in Redis): waiters do not wait for that step,
// and the flight stays joinable until it is done, so a caller arriving in
// between takes the published result instead of starting another load.
func (g *flightGroup[T]) do(ctx context.Context, key string, c caller,
	spawn func(func()), run func(f *flight[T]) (result[T], func())) (res result[T], shared bool, err error) {
	for {
		g.mu.Lock()
		if g.m == nil {
			g.m = make(map[string]*flight[T])
		}
		f, ok := g.m[key]
		if ok && !mayJoin(c, f) {
			ok = false
		}
		if !ok {
			f = &flight[T]{done: make(chan struct{})}
			g.m[key] = f
			spawn(func() { g.run(key, f, run) })
		}
		g.mu.Unlock()

		select {
		case <-f.done:
		case <-ctx.Done():
			return res, ok, ctx.Err()
		}
		if accepts(c, &f.res) {
			return f.res, ok, nil
		}
		// The flight began before an invalidation this caller must respect.
		// Make sure nobody joins it again, then start or join a newer one.
		g.mu.Lock()
		if g.m[key] == f {
			delete(g.m, key)
		}
		g.mu.Unlock()
	}
}

// mayJoin reports whether c may wait on f: not when f's result, or the
// generation of its lease, is already known to be too old for c.
func mayJoin[T any](c caller, f *flight[T]) bool {
	select {
	case <-f.done:
		// A failure or "not found" is news about the moment the load
		// ran: a caller that arrives after it was published loads again
		// (or reads the negative entry the flight stored).
		if f.res.err != nil {
			return false
		}
		return accepts(c, &f.res)
	default:
	}
	gg := f.grantGen.Load()
	return c.gen == 0 || gg == 0 || gg >= c.gen
}

// claim is the first half of flightGroup.do, without the wait: it returns
// the flight in progress for key that c may join, or registers a new one
// (started true). The caller must end a started flight with g.run, or the
// callers joining it wait forever.
func (g *flightGroup[T]) claim(key string, c caller) (f *flight[T], started bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = make(map[string]*flight[T])
	}
	if f, ok := g.m[key]; ok && mayJoin(c, f) {
		return f, false
	}
	f = &flight[T]{done: make(chan struct{})}
	g.m[key] = f
	return f, true
}

func (g *flightGroup[T]) run(key string, f *flight[T], run func(f *flight[T]) (result[T], func())) {
	defer func() {
		g.mu.Lock()
		if g.m[key] == f {
			delete(g.m, key)
		}
		g.mu.Unlock()
	}()
	var after func()
	func() {
		defer func() {
			if v := recover(); v != nil {
				f.res = result[T]{err: newPanicError(v)}
				after = nil
			}
			close(f.done)
		}()
		f.res, after = run(f)
	}()
	if after != nil {
		after()
	}
}
