package otelcache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/otelcache"
)

// On the real Redis: every span stays within the trace of its request.
func TestSpansOnRealRedis(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "otel:")
	e := newOtelEnv(t, nil)
	d := newDB(map[string]user{"ada": {Name: "Ada"}, "bob": {Name: "Bob"}})
	l := newLoader(t, rdb, d, e, &cache.Options{Prefix: prefix})
	ctx, req := e.tp.Tracer("test").Start(context.Background(), "request")

	_, err := l.Get(ctx, "ada")
	require.NoError(t, err)
	_, err = l.Get(ctx, "ada")
	require.NoError(t, err)
	gets := e.ended(t, "cache.Get", 2)
	require.Equal(t, "miss", attrs(gets[0])[otelcache.AttrResult].AsString())
	require.Equal(t, "hit", attrs(gets[1])[otelcache.AttrResult].AsString())
	for _, g := range gets {
		require.Equal(t, req.SpanContext().TraceID(), g.SpanContext().TraceID())
	}

	got, err := l.GetMany(ctx, []string{"ada", "bob"})
	require.NoError(t, err)
	require.Len(t, got, 2)
	many := e.ended(t, "cache.GetMany", 1)[0]
	require.EqualValues(t, 1, attrs(many)["cache.hit"].AsInt64())
	require.EqualValues(t, 1, attrs(many)["cache.miss"].AsInt64())

	_, err = l.WriteThrough(ctx, "ada", func(context.Context) (user, error) { return user{Name: "Ada L."}, nil })
	require.NoError(t, err)
	require.NoError(t, l.Invalidate(ctx, "ada", "bob"))
	e.ended(t, "cache.WriteThrough", 1)
	e.ended(t, "cache.Invalidate", 1)

	rm := e.collect(t)
	requests := metricOf(t, rm, "cache.requests")
	require.EqualValues(t, l.Stats().Hits, sumOf(t, requests, loaderAttr, hitAttr))
}

// leaseWaits is a Recorder that signals each lease wait.
type leaseWaits chan struct{}

func (w leaseWaits) Count(_ string, e cache.Event) {
	if e == cache.EventLeaseWait {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

func (leaseWaits) ObserveLoad(string, time.Duration, error) {}

// On the real Redis, two processes: the Get that waits for the other
// process's load says so on its span.
func TestLeaseWaitOnRealRedis(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "otel:")
	e := newOtelEnv(t, nil)

	started, release := make(chan struct{}), make(chan struct{})
	holder, err := cache.New(testenv.Redis(t, ""), "user", func(ctx context.Context, key string) (user, error) {
		close(started)
		<-release
		return user{Name: "Ada"}, nil
	}, &cache.Options{Prefix: prefix, RedisTimeout: 2 * time.Second, LoadTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close() })

	waits := make(leaseWaits, 1)
	waiter, err := cache.New(testenv.Redis(t, ""), "user", newDB(nil).load, &cache.Options{
		Prefix: prefix, RedisTimeout: 2 * time.Second, LeaseTimeout: time.Minute,
		Tracer: otelcache.NewTracer(otelcache.WithTracerProvider(e.tp)), Recorder: waits,
	})
	require.NoError(t, err)
	t.Cleanup(func() { waiter.Close() })

	ctx := context.Background()
	held := make(chan error, 1)
	go func() {
		_, err := holder.Get(ctx, "ada")
		held <- err
	}()
	<-started
	waited := make(chan error, 1)
	go func() {
		u, err := waiter.Get(ctx, "ada")
		if err == nil && u.Name != "Ada" {
			err = fmt.Errorf("got %+v", u)
		}
		waited <- err
	}()
	<-waits
	close(release)
	require.NoError(t, <-held)
	require.NoError(t, <-waited)

	get := e.ended(t, "cache.Get", 1)[0]
	require.Equal(t, "miss", attrs(get)[otelcache.AttrResult].AsString())
	require.Contains(t, eventNames(get), "lease_wait")
	require.Empty(t, e.ended(t, "cache.load", 0), "the waiter did not load: it took the holder's fill")
}
