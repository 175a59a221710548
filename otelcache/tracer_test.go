package otelcache_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/otelcache"
)

func TestGetSpansSayHowTheGetWasAnswered(t *testing.T) {
	e := newOtelEnv(t, nil)
	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada": {Name: "Ada"}})
	l := newLoader(t, rdb, d, e, nil)
	ctx, parent := e.tp.Tracer("test").Start(context.Background(), "request")

	for _, tc := range []struct {
		key, result string
		err         error
		loads       int
	}{
		{"ada", "miss", nil, 1},
		{"ada", "hit", nil, 0},
		{"nobody", "miss", cache.ErrNotFound, 1},
		{"nobody", "negative_hit", cache.ErrNotFound, 0},
	} {
		t.Run(tc.key+" "+tc.result, func(t *testing.T) {
			e.reset()
			_, err := l.Get(ctx, tc.key)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
			} else {
				require.NoError(t, err)
			}
			get := e.ended(t, "cache.Get", 1)[0]
			a := attrs(get)
			require.Equal(t, tc.result, a[otelcache.AttrResult].AsString())
			require.Equal(t, "user", a[otelcache.AttrLoader].AsString())
			require.Equal(t, parent.SpanContext().SpanID(), get.Parent().SpanID(), "a child of the caller's span")
			require.Equal(t, codes.Unset, get.Status().Code, "ErrNotFound is an answer, not a failure")
			loads := e.ended(t, "cache.load", tc.loads)
			require.Len(t, loads, tc.loads)
			for _, ld := range loads {
				require.Equal(t, get.SpanContext().SpanID(), ld.Parent().SpanID(), "the load is the Get's child")
				want := "ok"
				if tc.err != nil {
					want = "not_found"
				}
				require.Equal(t, want, attrs(ld)[otelcache.AttrLoadResult].AsString())
			}
		})
	}

	t.Run("load error", func(t *testing.T) {
		e.reset()
		d.setFail(errors.New("db down"))
		defer d.setFail(nil)
		_, err := l.Get(ctx, "grace")
		require.Error(t, err)
		get := e.ended(t, "cache.Get", 1)[0]
		require.Equal(t, codes.Error, get.Status().Code)
		require.Equal(t, "load_error", get.Status().Description)
		require.Equal(t, "load_error", attrs(get)[otelcache.AttrErrorType].AsString())
		ld := e.ended(t, "cache.load", 1)[0]
		require.Equal(t, "error", attrs(ld)[otelcache.AttrLoadResult].AsString())
		require.Equal(t, codes.Error, ld.Status().Code)
	})

	t.Run("bypass", func(t *testing.T) {
		e.reset()
		l.SetReadBypass(true)
		defer l.SetReadBypass(false)
		_, err := l.Get(ctx, "ada")
		require.NoError(t, err)
		get := e.ended(t, "cache.Get", 1)[0]
		require.Equal(t, "bypass", attrs(get)[otelcache.AttrResult].AsString())
	})
}

func TestSpansCarryNoKeysUnlessHashed(t *testing.T) {
	e := newOtelEnv(t, nil)
	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada@example.com": {Name: "Ada"}})
	plain := newLoader(t, rdb, d, e, &cache.Options{Prefix: "plain:"})
	_, err := plain.Get(context.Background(), "ada@example.com")
	require.NoError(t, err)
	_, err = plain.Get(context.Background(), "nobody@example.com") // an error message names the key
	require.ErrorIs(t, err, cache.ErrNotFound)
	for _, s := range e.ended(t, "cache.Get", 2) {
		for _, kv := range s.Attributes() {
			require.NotContains(t, kv.Value.String(), "example.com", "attribute %s", kv.Key)
		}
		require.NotContains(t, s.Status().Description, "example.com")
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				require.NotContains(t, kv.Value.String(), "example.com")
			}
		}
		require.NotContains(t, attrs(s), otelcache.AttrKeyHash)
	}

	e.reset()
	hashed := newLoader(t, rdb, d, e, &cache.Options{Prefix: "hashed:"}, otelcache.WithHashedKeys([]byte("s3cret")))
	_, err = hashed.Get(context.Background(), "ada@example.com")
	require.NoError(t, err)
	_, err = hashed.Get(context.Background(), "ada@example.com")
	require.NoError(t, err)
	gets := e.ended(t, "cache.Get", 2)
	h := attrs(gets[0])[otelcache.AttrKeyHash].AsString()
	require.Len(t, h, 16)
	require.Equal(t, h, attrs(gets[1])[otelcache.AttrKeyHash].AsString(), "one key, one hash")
	require.NotContains(t, h, "example")
	require.Equal(t, h, attrs(e.ended(t, "cache.load", 1)[0])[otelcache.AttrKeyHash].AsString())
}

func TestBackgroundWorkIsLinkedNotParented(t *testing.T) {
	e := newOtelEnv(t, nil)
	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada": {Name: "Ada"}})
	l := newLoader(t, rdb, d, e, &cache.Options{
		SampleRate: 1, SampleDelay: time.Millisecond,
		StaleWhileRevalidate: true, MaxStale: time.Hour,
	})
	ctx := context.Background()
	_, err := l.Get(ctx, "ada") // miss: not sampled
	require.NoError(t, err)
	e.ended(t, "cache.Get", 1)

	e.reset()
	_, err = l.Get(ctx, "ada") // hit: sampled
	require.NoError(t, err)
	hit := e.ended(t, "cache.Get", 1)[0]
	sample := e.ended(t, "cache.sample", 1)[0]
	require.False(t, sample.Parent().IsValid(), "a root of its own")
	require.NotEqual(t, hit.SpanContext().TraceID(), sample.SpanContext().TraceID())
	require.Len(t, sample.Links(), 1)
	require.Equal(t, hit.SpanContext(), sample.Links()[0].SpanContext.WithRemote(false), "linked to the hit")
	ld := e.ended(t, "cache.load", 1)[0]
	require.Equal(t, sample.SpanContext().SpanID(), ld.Parent().SpanID(), "the check's load is its child")
	require.Equal(t, []string{"sampled"}, eventNames(sample), "judged consistent")

	// Invalidated, kept for stale serving: answered stale, refreshed in
	// the background.
	require.NoError(t, l.Invalidate(ctx, "ada"))
	e.reset()
	_, err = l.Get(ctx, "ada")
	require.NoError(t, err)
	stale := e.ended(t, "cache.Get", 1)[0]
	require.Equal(t, "stale", attrs(stale)[otelcache.AttrResult].AsString())
	require.Contains(t, eventNames(stale), "refresh")
	refresh := e.ended(t, "cache.refresh", 1)[0]
	require.False(t, refresh.Parent().IsValid())
	require.Len(t, refresh.Links(), 1)
	require.Equal(t, stale.SpanContext().SpanID(), refresh.Links()[0].SpanContext.SpanID())
	require.Equal(t, codes.Unset, refresh.Status().Code)
}

func TestGetManySpanCountsPerKey(t *testing.T) {
	e := newOtelEnv(t, nil)
	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"a": {"A"}, "b": {"B"}, "c": {"C"}})
	l := newLoader(t, rdb, d, e, nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	e.reset()

	got, err := l.GetMany(ctx, []string{"a", "b", "c", "nobody"})
	require.NoError(t, err)
	require.Len(t, got, 3)
	many := e.ended(t, "cache.GetMany", 1)[0]
	a := attrs(many)
	require.EqualValues(t, 4, a[otelcache.AttrKeys].AsInt64())
	require.EqualValues(t, 1, a["cache.hit"].AsInt64())
	require.EqualValues(t, 3, a["cache.miss"].AsInt64())
	loads := e.ended(t, "cache.load", 1)
	require.Len(t, loads, 1, "one batch load")
	require.EqualValues(t, 3, attrs(loads[0])[otelcache.AttrKeys].AsInt64())
	require.Equal(t, many.SpanContext().SpanID(), loads[0].Parent().SpanID())
}

func TestWriteSpans(t *testing.T) {
	e := newOtelEnv(t, nil)
	mr, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada": {Name: "Ada"}})
	l := newLoader(t, rdb, d, e, nil)
	ctx := context.Background()

	var writeSpan trace.SpanContext
	_, err := l.WriteThrough(ctx, "ada", func(ctx context.Context) (user, error) {
		writeSpan = trace.SpanContextFromContext(ctx)
		return user{Name: "Ada L."}, nil
	})
	require.NoError(t, err)
	wt := e.ended(t, "cache.WriteThrough", 1)[0]
	require.Equal(t, wt.SpanContext(), writeSpan, "the write runs inside the WriteThrough span")
	require.Equal(t, codes.Unset, wt.Status().Code)

	_, err = l.WriteThrough(ctx, "ada", func(ctx context.Context) (user, error) {
		return user{}, errors.New("deadlock")
	})
	require.Error(t, err)
	wt = e.ended(t, "cache.WriteThrough", 2)[1]
	require.Equal(t, "write_error", wt.Status().Description)

	require.NoError(t, l.Invalidate(ctx, "ada", "bob"))
	inv := e.ended(t, "cache.Invalidate", 1)[0]
	require.EqualValues(t, 2, attrs(inv)[otelcache.AttrKeys].AsInt64())

	require.NoError(t, l.Set(ctx, "ada", user{Name: "Ada"}))
	e.ended(t, "cache.Set", 1)

	// Redis gone: the invalidation is queued, and the span says so.
	mr.Close()
	err = l.Invalidate(ctx, "ada")
	require.ErrorIs(t, err, cache.ErrQueued)
	inv = e.ended(t, "cache.Invalidate", 2)[1]
	require.Equal(t, "queued", inv.Status().Description)
	require.Contains(t, eventNames(inv), "invalidation_queued")
}

func TestSampledOutSpansRecordNothing(t *testing.T) {
	e := newOtelEnv(t, sdktrace.NeverSample())
	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada": {Name: "Ada"}})
	l := newLoader(t, rdb, d, e, nil)
	for range 3 {
		_, err := l.Get(context.Background(), "ada")
		require.NoError(t, err)
	}
	require.Empty(t, e.spans.Ended())
	require.EqualValues(t, 2, l.Stats().Hits, "counted all the same")
}

func TestOperationNamesAreSpanNames(t *testing.T) {
	e := newOtelEnv(t, nil)
	tr := otelcache.NewTracer(otelcache.WithTracerProvider(e.tp))
	for op := cache.OpGet; op.String() != "unknown"; op++ {
		_, sp := tr.Start(context.Background(), cache.Operation{Op: op, Loader: "x", Keys: 1})
		require.NotNil(t, sp)
		sp.End(nil)
	}
	var names []string
	for _, s := range e.spans.Ended() {
		names = append(names, s.Name())
	}
	require.Equal(t, "cache.Get cache.GetMany cache.Set cache.Invalidate cache.WriteThrough cache.load cache.refresh cache.sample",
		strings.Join(names, " "))
}
