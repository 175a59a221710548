package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// entryReads records the entry reads of a client, through its hook: single
// GETRANGEs, which it can hold until released, and pipelines of GETRANGEs
// with their keys.
type entryReads struct {
	hold    chan struct{} // while open, single GETRANGEs wait for it to close
	singles atomic.Int64

	mu        sync.Mutex // protects pipelines
	pipelines [][]string
}

// hook returns the hook that records the reads of the client it is added to.
func (h *entryReads) hook() *cmdHook {
	return &cmdHook{
		before: func(c hookCmd) error {
			if c.piped || c.name != "getrange" {
				return nil
			}
			h.singles.Add(1)
			if h.hold != nil {
				select {
				case <-h.hold:
				case <-c.ctx.Done():
					return c.ctx.Err()
				}
			}
			return nil
		},
		pipeline: func(cmds []hookCmd) {
			var keys []string
			for _, c := range cmds {
				if c.name == "getrange" {
					keys = append(keys, c.key)
				}
			}
			if len(keys) > 0 {
				h.mu.Lock()
				h.pipelines = append(h.pipelines, keys)
				h.mu.Unlock()
			}
		},
	}
}

func (h *entryReads) taken() [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pipelines)
}

// queued waits until n reads are queued in l's read pipe.
func queued[T any](t *testing.T, l *Loader[T], n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.reads.pipe.mu.Lock()
		q := len(l.reads.pipe.queue)
		l.reads.pipe.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads queued, want %d", q, n)
		}
		runtime.Gosched()
	}
}

// pipeFixture is a Loader whose first maxReadsInFlight reads are held, so
// that the Gets after them queue.
type pipeFixture struct {
	l     *Loader[row]
	tb    *table
	reads *entryReads
	rdb   *redis.Client
	held  sync.WaitGroup // the Gets whose reads are held
}

func newPipeFixture(t *testing.T, keys int, opts *Options) *pipeFixture {
	t.Helper()
	_, rdb := fakeRedis(t)
	f := &pipeFixture{tb: newTable(), reads: &entryReads{}, rdb: rdb}
	for i := range keys {
		f.tb.put(fmt.Sprint("k", i), fmt.Sprint("v", i))
	}
	if opts == nil {
		opts = &Options{RedisTimeout: relaxedTimeout}
	}
	f.l = newLoader(t, rdb, f.tb, opts)
	// Fill every key, then hold the reads.
	for i := range keys {
		_, err := f.l.Get(context.Background(), fmt.Sprint("k", i))
		require.NoError(t, err)
	}
	rdb.AddHook(f.reads.hook())
	return f
}

// holdReads starts maxReadsInFlight Gets of hold-keys whose reads are held
// by the hook until release is called.
func (f *pipeFixture) holdReads(t *testing.T) (release func()) {
	t.Helper()
	f.reads.hold = make(chan struct{})
	for i := range maxReadsInFlight {
		f.held.Add(1)
		go func() {
			defer f.held.Done()
			f.l.Get(context.Background(), fmt.Sprint("hold", i))
		}()
	}
	want := int64(maxReadsInFlight)
	deadline := time.Now().Add(10 * time.Second)
	for f.reads.singles.Load() < want {
		if time.Now().After(deadline) {
			t.Fatal("held reads never sent")
		}
		runtime.Gosched()
	}
	return func() { close(f.reads.hold); f.held.Wait() }
}

// queueGets starts a Get of each of k0…k(n-1) and waits until their reads
// are queued; done waits for them and requires each to answer its key's
// value without error.
func (f *pipeFixture) queueGets(t *testing.T, n int) (done func()) {
	t.Helper()
	var wg sync.WaitGroup
	got := make([]row, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { got[i], errs[i] = f.l.Get(context.Background(), fmt.Sprint("k", i)) })
	}
	queued(t, f.l, n)
	return func() {
		t.Helper()
		wg.Wait()
		for i := range n {
			require.NoError(t, errs[i])
			require.Equal(t, fmt.Sprint("v", i), got[i].Val)
		}
	}
}

// TestPipelineQueuedReadsShareOnePipeline: Gets of different keys that
// arrive while the Loader's reads are in flight are sent as one pipeline
// when a read returns, and each gets its own key's value.
func TestPipelineQueuedReadsShareOnePipeline(t *testing.T) {
	const n = 20
	f := newPipeFixture(t, n, nil)
	release := f.holdReads(t)

	done := f.queueGets(t, n)
	release()
	done()

	pipes := f.reads.taken()
	require.Len(t, pipes, 1, "the %d queued reads are one pipeline", n)
	require.Len(t, pipes[0], n)
	require.EqualValues(t, n, f.l.Stats().Hits, "every queued read is a hit")
	require.EqualValues(t, n+maxReadsInFlight, f.tb.loads.Load(), "no load but the fills' and the held Gets'")
}

// TestPipelineSequentialGetsSendSingleReads: a lone Get never waits for
// a pipeline; it sends its own GETRANGE.
func TestPipelineSequentialGetsSendSingleReads(t *testing.T) {
	f := newPipeFixture(t, 10, nil)
	for i := range 10 {
		v, err := f.l.Get(context.Background(), fmt.Sprint("k", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint("v", i), v.Val)
	}
	require.EqualValues(t, 10, f.reads.singles.Load())
	require.Empty(t, f.reads.taken())
}

// TestPipelineReadSentAfterInvalidation: a Get queued after an
// invalidation completed reads what the invalidation left (DESIGN P3b):
// its read is sent after it arrived.
func TestPipelineReadSentAfterInvalidation(t *testing.T) {
	f := newPipeFixture(t, 2, nil)
	release := f.holdReads(t)

	f.tb.put("k0", "v0-new")
	require.NoError(t, f.l.Invalidate(context.Background(), "k0"))
	done := make(chan row)
	go func() {
		v, err := f.l.Get(context.Background(), "k0")
		if err != nil {
			t.Error(err)
		}
		done <- v
	}()
	queued(t, f.l, 1)
	release()
	require.Equal(t, "v0-new", (<-done).Val)
}

// TestPipelineQueuedCallerLeaves: a Get whose context ends while its read
// is queued returns the context's error at once; the others are answered.
func TestPipelineQueuedCallerLeaves(t *testing.T) {
	f := newPipeFixture(t, 3, nil)
	release := f.holdReads(t)

	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan error)
	go func() {
		_, err := f.l.Get(ctx, "k0")
		left <- err
	}()
	stay := make(chan row)
	go func() {
		v, err := f.l.Get(context.Background(), "k1")
		if err != nil {
			t.Error(err)
		}
		stay <- v
	}()
	queued(t, f.l, 2)
	cancel()
	require.ErrorIs(t, <-left, context.Canceled)
	release()
	require.Equal(t, "v1", (<-stay).Val)
}

// TestPipelinePerKeyFailures: a key holding another type inside a
// pipeline is that Get's corrupt entry (replaced); the other keys of the
// pipeline are hits.
func TestPipelinePerKeyFailures(t *testing.T) {
	f := newPipeFixture(t, 3, nil)
	require.NoError(t, f.rdb.Set(context.Background(), f.l.Key("k1"), "not a hash", 0).Err())
	release := f.holdReads(t)

	done := f.queueGets(t, 3)
	release()
	done()
	require.EqualValues(t, 1, f.l.Stats().CorruptEntries)
	require.EqualValues(t, 3+maxReadsInFlight+1, f.tb.loads.Load(), "only the corrupt key is loaded again (and the held Gets)")
	typ, err := f.rdb.Type(context.Background(), f.l.Key("k1")).Result()
	require.NoError(t, err)
	require.Equal(t, "string", typ, "the corrupt entry is replaced")
}

// TestPipelineFailsOpen: when the pipeline fails (Redis unreachable), the
// queued Gets load from the database and answer; no error reaches them.
func TestPipelineFailsOpen(t *testing.T) {
	f := newPipeFixture(t, 4, &Options{RedisTimeout: relaxedTimeout, DisableBreaker: true})
	var fail atomic.Bool
	f.rdb.AddHook(&cmdHook{before: func(hookCmd) error {
		if fail.Load() {
			return errUnreachable
		}
		return nil
	}})
	release := f.holdReads(t)

	done := f.queueGets(t, 4)
	fail.Store(true)
	release()
	done()
	require.EqualValues(t, 4+maxReadsInFlight+4, f.tb.loads.Load(), "each queued Get loaded")
	require.Positive(t, f.l.Stats().RedisErrors)
}

// TestPipelineInFlightTimesOut: when the reads in flight time out, the
// queued Get is still answered (from what budget it has left, or from the
// database), without error.
func TestPipelineInFlightTimesOut(t *testing.T) {
	f := newPipeFixture(t, 2, &Options{RedisTimeout: 50 * time.Millisecond, DisableBreaker: true})
	release := f.holdReads(t)
	defer release()

	v, err := f.l.Get(context.Background(), "k0")
	require.NoError(t, err)
	require.Equal(t, "v0", v.Val)
}

// TestPipelineBreakerOpen: queued reads are not sent while the breaker is
// open; their Gets load.
func TestPipelineBreakerOpen(t *testing.T) {
	f := newPipeFixture(t, 3, &Options{RedisTimeout: relaxedTimeout, BreakerFailures: 1, BreakerCooldown: time.Hour})
	release := f.holdReads(t)
	done := f.queueGets(t, 3)
	// Open the breaker by a failed call of another client's command path.
	err := f.l.redisCall(context.Background(), &redisBudget{left: time.Second}, func(context.Context) error {
		return errors.New("redis down")
	})
	require.Error(t, err)
	require.Equal(t, BreakerOpen, f.l.BreakerState())
	release()
	done()
	require.Empty(t, f.reads.taken(), "no pipeline sent while open")
}

// countingCodec is JSON counting its decodings.
type countingCodec struct {
	JSON
	decodes atomic.Int64
}

func (c *countingCodec) Unmarshal(data []byte, v any) error {
	c.decodes.Add(1)
	return c.JSON.Unmarshal(data, v)
}

// coalescedWaiting waits until n Gets wait for the next read of rkey.
func coalescedWaiting[T any](t *testing.T, l *Loader[T], rkey string, n int) {
	t.Helper()
	sh := l.reads.shard(rkey)
	deadline := time.Now().Add(10 * time.Second)
	for {
		sh.mu.Lock()
		w := 0
		if b := sh.m[rkey]; b != nil {
			w = b.waiting
		}
		sh.mu.Unlock()
		if w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Gets wait for the next read of %s, want %d", w, rkey, n)
		}
		runtime.Gosched()
	}
}

// TestCoalescedGetsShareOneDecoding: the Gets of a hot key that share one
// Redis read share one decoding of its payload (and so the same value, as
// Gets sharing a load do).
func TestCoalescedGetsShareOneDecoding(t *testing.T) {
	codec := &countingCodec{}
	f := newPipeFixture(t, 1, &Options{RedisTimeout: relaxedTimeout, Codec: codec})
	f.reads.hold = make(chan struct{})
	before := codec.decodes.Load()

	const waiters = 6
	var wg sync.WaitGroup
	get := func() {
		defer wg.Done()
		if v, err := f.l.Get(context.Background(), "k0"); err != nil || v.Val != "v0" {
			t.Errorf("Get: %v, %v; want v0", v, err)
		}
	}
	wg.Add(1)
	go get() // its read is held
	deadline := time.Now().Add(10 * time.Second)
	for f.reads.singles.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("first read never sent")
		}
		runtime.Gosched()
	}
	for range waiters {
		wg.Add(1)
		go get()
	}
	coalescedWaiting(t, f.l, f.l.Key("k0"), waiters)
	close(f.reads.hold)
	wg.Wait()

	require.EqualValues(t, 2, f.reads.singles.Load(), "the held read and one shared by the waiters")
	require.EqualValues(t, 2, codec.decodes.Load()-before, "one decoding per read")
	require.EqualValues(t, 1+waiters, f.l.Stats().Hits)
}
