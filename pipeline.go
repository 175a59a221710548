package cache

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
)

// maxReadsInFlight bounds the reads (single GETRANGEs or pipelines of them) a
// Loader has in flight at once; reads asked for beyond it queue and are
// sent together as one pipeline when a read in flight returns.
const maxReadsInFlight = 2

// maxPipelinedReads bounds the reads of one pipeline; the rest of the queue
// waits for the next.
const maxPipelinedReads = 256

// readPipe writes the entry reads of concurrent Gets of different keys to
// Redis as pipelines. While fewer than maxReadsInFlight reads are in flight a
// Get sends its own GETRANGE at once, on its own goroutine, so that a lone
// Get's latency is a plain GETRANGE's: no timer, no hand-off. Beyond that,
// reads queue, and each read in flight that returns sends the queue as one
// pipeline: one write and one read of the socket for many Gets, where
// the connection pool would otherwise serve them one round trip at a time.
// A queued read is sent after its Get arrived, so it reflects every
// invalidation completed before the Get began (DESIGN P3b).
type readPipe struct {
	mu       sync.Mutex // protects inFlight and queue
	inFlight int
	queue    []*pipedRead
}

// pipedRead is one queued entry read.
type pipedRead struct {
	rkey     string
	deadline time.Time     // when the Get's Redis budget runs out
	done     chan struct{} // closed when e and err are set
	e        entry.Entry
	err      error
}

// readOrQueue fetches and decodes key's entry: directly when the Loader has
// room for another read in flight, else as part of the next pipeline. It
// spends from b what it waited.
func (l *Loader[T]) readOrQueue(ctx context.Context, b *redisBudget, rkey string) (entry.Entry, error) {
	p := &l.reads.pipe
	p.mu.Lock()
	if p.inFlight < maxReadsInFlight {
		p.inFlight++
		p.mu.Unlock()
		e, err := l.readDirect(ctx, b, rkey)
		l.readReturned()
		return e, err
	}
	if b.left <= 0 {
		p.mu.Unlock()
		return entry.Entry{}, ErrRedisUnavailable
	}
	r := &pipedRead{rkey: rkey, deadline: time.Now().Add(b.left), done: make(chan struct{})}
	p.queue = append(p.queue, r)
	p.mu.Unlock()

	start := time.Now()
	defer func() { b.left -= time.Since(start) }()
	select {
	case <-r.done:
		return r.e, r.err
	case <-ctx.Done():
		// The read is still sent with the others; its answer is dropped.
		return entry.Entry{}, callerGone{ctx.Err()}
	}
}

// readReturned ends a read in flight: the queued reads, if any, take its
// place as one pipeline sent on a goroutine of its own (so the Get that
// returned is not held up).
func (l *Loader[T]) readReturned() {
	p := &l.reads.pipe
	p.mu.Lock()
	if len(p.queue) == 0 {
		p.inFlight--
		p.mu.Unlock()
		return
	}
	reads := p.queue
	if len(reads) > maxPipelinedReads {
		reads = reads[:maxPipelinedReads:maxPipelinedReads]
		p.queue = p.queue[maxPipelinedReads:]
	} else {
		p.queue = nil
	}
	p.mu.Unlock()
	l.bg.Go(func() {
		l.sendReads(reads)
		l.readReturned()
	})
}

// sendReads sends queued reads as one pipeline, bounded by the
// earliest budget among them (so that none waits past its own), and
// answers each.
func (l *Loader[T]) sendReads(reads []*pipedRead) {
	deadline := reads[0].deadline
	for _, r := range reads[1:] {
		if r.deadline.Before(deadline) {
			deadline = r.deadline
		}
	}
	b := redisBudget{left: time.Until(deadline)}
	if len(reads) == 1 {
		r := reads[0]
		r.e, r.err = l.readDirect(context.Background(), &b, r.rkey)
		close(r.done)
		return
	}
	rkeys := make([]string, len(reads))
	for i, r := range reads {
		rkeys[i] = r.rkey
	}
	// On a Redis Cluster, one pipeline per master, each through its
	// master's breaker. A read not sent has no command.
	cmds := make([]*redis.StringCmd, len(reads))
	err := l.perMaster(context.Background(), &b, rkeys, l.redisCallKey, func(ctx context.Context, idx []int) error {
		pipe := l.rdb.Pipeline()
		for _, i := range idx {
			cmds[i] = l.readEntry(ctx, pipe, rkeys[i])
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	for i, r := range reads {
		switch {
		case cmds[i] == nil: // the breaker or the budget refused the call
			r.err = cmp.Or(err, ErrRedisUnavailable)
		default:
			r.e, r.err = l.decodeRead(cmds[i].Result())
		}
		close(r.done)
	}
}

// readDirect fetches and decodes key's entry in one round trip of its own.
func (l *Loader[T]) readDirect(ctx context.Context, b *redisBudget, rkey string) (entry.Entry, error) {
	var s string
	err := l.redisCallKey(ctx, b, rkey, func(ctx context.Context) (err error) {
		s, err = l.readEntry(ctx, l.rdb, rkey).Result()
		return err
	})
	return l.decodeRead(s, err)
}

// readEntry sends the read of an entry: its header and at most
// MaxValueBytes+1 bytes of payload, so that a planted huge value costs no
// more than the limit to find out about (it is then corrupt, and
// replaced).
func (l *Loader[T]) readEntry(ctx context.Context, c processor, rkey string) *redis.StringCmd {
	// The command built by hand, with its bound boxed once per Loader: a
	// hit allocates no more than a GET.
	cmd := redis.NewStringCmd(ctx, "getrange", rkey, 0, l.readEnd)
	_ = c.Process(ctx, cmd) // the error is cmd's
	return cmd
}

// processor sends a command: a client or a pipeline.
type processor interface {
	Process(ctx context.Context, cmd redis.Cmder) error
}

// decodeRead decodes the reply of an entry's read; a key that holds
// another type, or a value over MaxValueBytes, is a corrupt entry.
func (l *Loader[T]) decodeRead(s string, err error) (entry.Entry, error) {
	if err != nil {
		if isWrongType(err) {
			return entry.Entry{}, fmt.Errorf("%w: %v", entry.ErrCorrupt, err)
		}
		return entry.Entry{}, err
	}
	return entry.Decode(s, l.s.maxValueBytes)
}
