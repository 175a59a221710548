package cache

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
)

// readGroup coalesces concurrent reads of one key: while a read of a key is
// in flight, Gets of that key that arrive wait for the next read, which is
// sent as soon as the one in flight returns and answers all of them. A Get
// never shares a read sent before it arrived, so a read that raced with an
// invalidation completed before the Get began is never handed to it (DESIGN
// P3b). In a stampede this turns a hundred GETRANGEs queued in the connection
// pool into two; with no concurrency it costs a map insert and delete.
type readGroup struct {
	seed   maphash.Seed
	shards [64]readShard
	// pipe sends the reads of different keys, pipelined when many are
	// asked for at once.
	pipe readPipe
}

type readShard struct {
	mu sync.Mutex // protects m
	// m holds the keys with a read in flight, each with the next read,
	// which the Gets that arrived since wait for (nil while none waits).
	m map[string]*coalescedRead
}

// coalescedRead is a read that Gets are waiting for; it is sent when the read
// in flight before it returns.
type coalescedRead struct {
	done     chan struct{} // closed when e and err are set
	deadline time.Time     // the earliest budget of the Gets waiting
	waiting  int           // Gets waiting, under the shard's lock
	e        entry.Entry
	err      error

	// The Gets that share the read share one decoding of its payload
	// (see Loader.decodeShared).
	decodeOnce sync.Once
	decoded    any // a decodedValue[T]
}

func (g *readGroup) shard(key string) *readShard {
	return &g.shards[maphash.String(g.seed, key)%uint64(len(g.shards))]
}

// read returns key's entry: from a read of its own when no read of key is
// in flight, else from the next read, which it returns too (nil when the
// read was its own). It spends from b what it waited.
func (l *Loader[T]) read(ctx context.Context, b *redisBudget, rkey string) (entry.Entry, *coalescedRead, error) {
	sh := l.reads.shard(rkey)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[string]*coalescedRead)
	}
	next, inFlight := sh.m[rkey]
	if !inFlight {
		sh.m[rkey] = nil
		sh.mu.Unlock()
		e, err := l.readOrQueue(ctx, b, rkey)
		l.readDone(sh, rkey)
		return e, nil, err
	}
	if next == nil {
		next = &coalescedRead{done: make(chan struct{}), deadline: time.Now().Add(b.left)}
		sh.m[rkey] = next
	}
	next.waiting++
	sh.mu.Unlock()

	start := time.Now()
	defer func() { b.left -= time.Since(start) }()
	select {
	case <-next.done:
		return next.e, next, next.err
	case <-ctx.Done():
		return entry.Entry{}, nil, callerGone{ctx.Err()}
	}
}

// readDone ends the read of rkey in flight and sends the next one, if Gets
// are waiting for it, on a goroutine of its own (the caller that finished
// returns at once).
func (l *Loader[T]) readDone(sh *readShard, rkey string) {
	sh.mu.Lock()
	next := sh.m[rkey]
	if next == nil {
		delete(sh.m, rkey)
	} else {
		sh.m[rkey] = nil // next is in flight now; later Gets wait for the one after
	}
	sh.mu.Unlock()
	if next == nil {
		return
	}
	l.bg.Go(func() {
		// Bounded by the earliest budget among the waiting Gets, so that
		// none of them waits past its own; detached from their contexts,
		// since each leaves on its own.
		b := redisBudget{left: time.Until(next.deadline)}
		next.e, next.err = l.readOrQueue(context.Background(), &b, rkey)
		close(next.done)
		l.readDone(sh, rkey)
	})
}

// decodedValue is a payload decoded once for the Gets sharing a read.
type decodedValue[T any] struct {
	v   T
	err error
}

// decodeShared decodes payload, which came from shared: once for all the
// Gets that shared that read, which then hold the same value (as the Gets
// that share a load do). Without shared, the read was the Get's own.
func (l *Loader[T]) decodeShared(shared *coalescedRead, payload string) (T, error) {
	if shared == nil {
		return l.decode(payload)
	}
	shared.decodeOnce.Do(func() {
		v, err := l.decode(payload)
		shared.decoded = decodedValue[T]{v, err}
	})
	d := shared.decoded.(decodedValue[T])
	return d.v, d.err
}
