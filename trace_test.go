package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/stretchr/testify/require"
)

// recTracer is a Tracer that keeps every span it started, with the span of
// the context it was started in.
type recTracer struct {
	mu    sync.Mutex // protects spans
	spans []*recSpan
	ended chan *recSpan // receives each span as it ends
}

type recSpanKey struct{}

func newRecTracer() *recTracer { return &recTracer{ended: make(chan *recSpan, 1024)} }

func (tr *recTracer) Start(ctx context.Context, op Operation) (context.Context, Span) {
	parent, _ := ctx.Value(recSpanKey{}).(*recSpan)
	sp := &recSpan{tr: tr, op: op, parent: parent}
	tr.mu.Lock()
	tr.spans = append(tr.spans, sp)
	tr.mu.Unlock()
	return context.WithValue(ctx, recSpanKey{}, sp), sp
}

// waitEnd returns the next span of op to end.
func (tr *recTracer) waitEnd(t *testing.T, op Op) *recSpan {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case sp := <-tr.ended:
			if sp.op.Op == op {
				return sp
			}
		case <-timeout:
			t.Fatalf("no %v span ended", op)
		}
	}
}

// reset forgets the spans started so far.
func (tr *recTracer) reset() {
	tr.mu.Lock()
	tr.spans = nil
	tr.mu.Unlock()
	for {
		select {
		case <-tr.ended:
		default:
			return
		}
	}
}

// of returns the spans of op started so far.
func (tr *recTracer) of(op Op) []*recSpan {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []*recSpan
	for _, sp := range tr.spans {
		if sp.op.Op == op {
			out = append(out, sp)
		}
	}
	return out
}

type recSpan struct {
	tr     *recTracer
	op     Operation
	parent *recSpan

	mu     sync.Mutex // protects events, ended, err
	events []Event
	ended  bool
	err    error
}

func (sp *recSpan) Event(e Event) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.events = append(sp.events, e)
}

func (sp *recSpan) End(err error) {
	sp.mu.Lock()
	if sp.ended {
		sp.mu.Unlock()
		panic("span ended twice")
	}
	sp.ended, sp.err = true, err
	sp.mu.Unlock()
	sp.tr.ended <- sp
}

func (sp *recSpan) evs() []Event {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return slices.Clone(sp.events)
}

func (sp *recSpan) result() (bool, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.ended, sp.err
}

func TestTracerFollowsGetsAndTheirLoads(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "one")
	tr := newRecTracer()
	l := newLoader(t, rdb, tb, &Options{Tracer: tr})
	ctx := context.Background()

	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	get := tr.waitEnd(t, OpGet)
	require.Equal(t, Operation{Op: OpGet, Loader: "row", Key: "a", Keys: 1}, get.op)
	require.Equal(t, []Event{EventMiss}, get.evs())
	loads := tr.of(OpLoad)
	require.Len(t, loads, 1)
	require.Same(t, get, loads[0].parent, "the load is the Get's child")
	ended, lerr := loads[0].result()
	require.True(t, ended)
	require.NoError(t, lerr)

	tr.reset()
	_, err = l.Get(ctx, "a")
	require.NoError(t, err)
	get = tr.waitEnd(t, OpGet)
	require.Equal(t, []Event{EventHit}, get.evs())
	require.Empty(t, tr.of(OpLoad))

	tr.reset()
	_, err = l.Get(ctx, "missing")
	require.ErrorIs(t, err, ErrNotFound)
	get = tr.waitEnd(t, OpGet)
	_, gerr := get.result()
	require.ErrorIs(t, gerr, ErrNotFound)
	_, err = l.Get(ctx, "missing")
	require.ErrorIs(t, err, ErrNotFound)
	get = tr.waitEnd(t, OpGet)
	require.Equal(t, []Event{EventNegativeHit}, get.evs())

	tr.reset()
	l.SetReadBypass(true)
	_, err = l.Get(ctx, "a")
	require.NoError(t, err)
	get = tr.waitEnd(t, OpGet)
	require.Equal(t, []Event{EventBypass}, get.evs())
	l.SetReadBypass(false)

	tr.reset()
	boom := errors.New("boom")
	tb.hook = func(context.Context, string, int64) error { return boom }
	require.NoError(t, l.Invalidate(ctx, "a"))
	_, err = l.Get(ctx, "a")
	require.ErrorIs(t, err, boom)
	get = tr.waitEnd(t, OpGet)
	_, gerr = get.result()
	require.ErrorIs(t, gerr, boom)
	load := tr.of(OpLoad)[0]
	_, lerr = load.result()
	require.ErrorIs(t, lerr, boom, "the load span ends with the load's error")
}

func TestTracerLinksBackgroundWorkToTheGetThatStartedIt(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "one")
	tr := newRecTracer()
	l := newLoader(t, rdb, tb, &Options{Tracer: tr, SampleRate: 1, SampleDelay: time.Millisecond,
		StaleWhileRevalidate: true, MaxStale: time.Hour})
	ctx := context.Background()
	_, err := l.Get(ctx, "a") // miss: not sampled
	require.NoError(t, err)
	tr.waitEnd(t, OpGet)

	_, err = l.Get(ctx, "a") // hit: sampled
	require.NoError(t, err)
	hit := tr.waitEnd(t, OpGet)
	sample := tr.waitEnd(t, OpSample)
	require.Same(t, hit, sample.parent, "the check is started from the hit's context (to link to it)")
	require.Equal(t, "a", sample.op.Key)
	for _, ld := range tr.of(OpLoad) {
		if ld.parent != nil && ld.parent.op.Op == OpSample {
			require.Same(t, sample, ld.parent)
		}
	}

	// Invalidated, kept for stale serving: served stale, refreshed in the
	// background.
	require.NoError(t, l.Invalidate(ctx, "a"))
	_, err = l.Get(ctx, "a")
	require.NoError(t, err)
	stale := tr.waitEnd(t, OpGet)
	require.Contains(t, stale.evs(), EventStale)
	require.Contains(t, stale.evs(), EventRefresh)
	refresh := tr.waitEnd(t, OpRefresh)
	require.Same(t, stale, refresh.parent, "the refresh is started from the Get's context (to link to it)")
	_, rerr := refresh.result()
	require.NoError(t, rerr)
}

func TestTracerFollowsGetManyAndWrites(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	for _, k := range []string{"a", "b", "c"} {
		tb.put(k, k)
	}
	tr := newRecTracer()
	l, err := NewBatch(rdb, "row", func(ctx context.Context, keys []string) (map[string]row, error) {
		out := map[string]row{}
		for _, k := range keys {
			if r, err := tb.load(ctx, k); err == nil {
				out[k] = r
			}
		}
		return out, nil
	}, &Options{Tracer: tr, Prefix: testenv.Prefix(t, rdb, "cachetest:"), RedisTimeout: testRedisTimeout})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()

	_, err = l.Get(ctx, "a")
	require.NoError(t, err)
	tr.reset()
	got, err := l.GetMany(ctx, []string{"a", "b", "c", "b"})
	require.NoError(t, err)
	require.Len(t, got, 3)
	many := tr.waitEnd(t, OpGetMany)
	require.Equal(t, Operation{Op: OpGetMany, Loader: "row", Keys: 3}, many.op)
	evs := many.evs()
	slices.Sort(evs)
	require.Equal(t, []Event{EventHit, EventMiss, EventMiss}, evs)
	loads := tr.of(OpLoad)
	require.Len(t, loads, 1, "one batch load")
	require.Equal(t, 2, loads[0].op.Keys)
	require.Same(t, many, loads[0].parent)

	tr.reset()
	_, err = l.WriteThrough(ctx, "a", func(ctx context.Context) (row, error) {
		sp, _ := ctx.Value(recSpanKey{}).(*recSpan)
		require.NotNil(t, sp)
		require.Equal(t, OpWriteThrough, sp.op.Op, "the write runs in the WriteThrough's context")
		return tb.put("a", "two"), nil
	})
	require.NoError(t, err)
	wt := tr.waitEnd(t, OpWriteThrough)
	require.Equal(t, "a", wt.op.Key)

	require.NoError(t, l.Invalidate(ctx, "a", "b"))
	inv := tr.waitEnd(t, OpInvalidate)
	require.Equal(t, Operation{Op: OpInvalidate, Loader: "row", Keys: 2}, inv.op)
	require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{Key: "c", Version: 9}))
	inv = tr.waitEnd(t, OpInvalidate)
	require.Equal(t, Operation{Op: OpInvalidate, Loader: "row", Key: "c", Keys: 1}, inv.op)

	require.NoError(t, l.Set(ctx, "c", row{Val: "old", Ver: 1}))
	set := tr.waitEnd(t, OpSet)
	require.Equal(t, []Event{EventStaleSetPrevented}, set.evs(), "below the version floor")
}

func TestOpString(t *testing.T) {
	require.Equal(t, "Get", OpGet.String())
	require.Equal(t, "sample", OpSample.String())
	require.Equal(t, "unknown", Op(-1).String())
	require.Equal(t, "unknown", numOps.String())
}
