package otelcache_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/otelcache"
)

// both is a Recorder that feeds two.
type both [2]interface {
	cache.Recorder
	cache.PendingRecorder
	cache.RedisRecorder
	cache.WriteRecorder
}

func (b both) ObserveRedis(loader string, d time.Duration, err error) {
	b[0].ObserveRedis(loader, d, err)
	b[1].ObserveRedis(loader, d, err)
}

func (b both) CountWrite(loader string, op cache.Op, r cache.WriteResult) {
	b[0].CountWrite(loader, op, r)
	b[1].CountWrite(loader, op, r)
}

func (b both) Count(loader string, e cache.Event) {
	b[0].Count(loader, e)
	b[1].Count(loader, e)
}

func (b both) ObserveLoad(loader string, d time.Duration, err error) {
	b[0].ObserveLoad(loader, d, err)
	b[1].ObserveLoad(loader, d, err)
}

func (b both) InvalidationsPending(loader string, n int) {
	b[0].InvalidationsPending(loader, n)
	b[1].InvalidationsPending(loader, n)
}

func TestMetricsEqualThePrometheusAdapters(t *testing.T) {
	e := newOtelEnv(t, nil)
	reg := prometheus.NewRegistry()
	prom, err := cache.NewPrometheus(reg)
	require.NoError(t, err)
	om, err := otelcache.NewMetrics(otelcache.WithMeterProvider(e.mp))
	require.NoError(t, err)

	_, rdb := fakeRedis(t)
	d := newDB(map[string]user{"ada": {Name: "Ada"}, "bob": {Name: "Bob"}})
	l, err := cache.NewBatch(rdb, "user", d.loadMany, &cache.Options{Recorder: both{prom, om}})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()
	for _, k := range []string{"ada", "ada", "ada", "bob", "nobody", "nobody"} {
		_, _ = l.Get(ctx, k)
	}
	_, _ = l.GetMany(ctx, []string{"ada", "bob", "carl"})
	d.setFail(errors.New("db down"))
	_, _ = l.Get(ctx, "dan")
	d.setFail(nil)
	require.NoError(t, l.Set(ctx, "ada", user{Name: "Ada"}))
	require.NoError(t, l.Invalidate(ctx, "bob", "carl"))
	_, err = l.WriteThrough(ctx, "ada", func(context.Context) (user, error) { return user{Name: "Ada L."}, nil })
	require.NoError(t, err)
	_, err = l.WriteThrough(ctx, "ada", func(context.Context) (user, error) { return user{}, errors.New("deadlock") })
	require.Error(t, err)
	l.SetReadBypass(true)
	_, _ = l.Get(ctx, "ada")

	rm := e.collect(t)
	loader := attribute.String("loader", "user")
	requests := metricOf(t, rm, "cache.requests")
	events := metricOf(t, rm, "cache.events")
	for ev := cache.EventHit; ev.String() != "unknown"; ev++ {
		var otelN int64
		var promN float64
		if ev <= cache.EventBypass || ev == cache.EventLocalHit {
			otelN = sumOf(t, requests, loader, attribute.String("result", ev.String()))
			promN = promValue(t, reg, "cache_requests_total", "result", ev.String())
		} else {
			otelN = sumOf(t, events, loader, attribute.String("event", ev.String()))
			promN = promValue(t, reg, "cache_events_total", "event", ev.String())
		}
		require.EqualValues(t, promN, otelN, "%s", ev)
	}
	st := l.Stats()
	require.EqualValues(t, st.Hits, sumOf(t, requests, loader, attribute.String("result", "hit")))
	require.EqualValues(t, st.Misses, sumOf(t, requests, loader, attribute.String("result", "miss")))

	loads := metricOf(t, rm, "cache.loads")
	var all int64
	for _, r := range []string{"ok", "not_found", "error"} {
		n := sumOf(t, loads, loader, attribute.String("result", r))
		require.EqualValues(t, promValue(t, reg, "cache_loads_total", "result", r), n, r)
		all += n
	}
	require.EqualValues(t, st.Loads, all)
	require.EqualValues(t, 1, sumOf(t, loads, loader, attribute.String("result", "error")))

	dur := metricOf(t, rm, "cache.load.duration")
	require.Equal(t, "s", dur.Unit)
	var observed uint64
	for _, r := range []string{"ok", "not_found", "error"} {
		p := histOf(t, dur, loader, attribute.String("result", r))
		require.Equal(t, promHistCount(t, reg, "cache_load_duration_seconds", "result", r), p.Count, r)
		require.Len(t, p.Bounds, 16)
		require.InDelta(t, 0.0005, p.Bounds[0], 1e-12)
		observed += p.Count
	}
	require.EqualValues(t, st.Loads, observed)

	redisDur := metricOf(t, rm, "cache.redis.duration")
	require.Equal(t, "s", redisDur.Unit)
	ok := histOf(t, redisDur, loader, attribute.String("result", "ok"))
	require.NotZero(t, ok.Count)
	require.Equal(t, promHistCount(t, reg, "cache_redis_duration_seconds", "result", "ok"), ok.Count)
	require.InDelta(t, 0.0001, ok.Bounds[0], 1e-12)

	writes := metricOf(t, rm, "cache.writes")
	for _, w := range []struct {
		op, result string
		n          int64
	}{
		{"set", "stored", 1}, {"invalidate", "invalidated", 1}, {"write_through", "stored", 1},
		{"write_through", "error", 1}, {"write_through", "queued", 0}, {"set", "error", 0},
	} {
		n := sumOf(t, writes, loader, attribute.String("op", w.op), attribute.String("result", w.result))
		require.Equal(t, w.n, n, "%s %s", w.op, w.result)
		require.EqualValues(t, promValue(t, reg, "cache_writes_total", "result", w.result, "op", w.op), n)
	}

	require.EqualValues(t, 1, gaugeOf(t, metricOf(t, rm, "cache.read_bypass"), loader))
	require.EqualValues(t, 0, gaugeOf(t, metricOf(t, rm, "cache.breaker.state"), loader))
	require.EqualValues(t, 0, gaugeOf(t, metricOf(t, rm, "cache.invalidations.pending"), loader))
}

// promValue returns the value of the counter name{loader="user",
// labels...} (label, value pairs).
func promValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	return promMetric(t, reg, name, labels...).GetCounter().GetValue()
}

// promHistCount returns the number of observations of the histogram
// name{loader="user", labels...}.
func promHistCount(t *testing.T, reg *prometheus.Registry, name string, labels ...string) uint64 {
	t.Helper()
	return promMetric(t, reg, name, labels...).GetHistogram().GetSampleCount()
}

// promMetric returns the series name{loader="user", labels...}.
func promMetric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) interface {
	GetCounter() *dto.Counter
	GetHistogram() *dto.Histogram
} {
	t.Helper()
	want := map[string]string{"loader": "user"}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if maps.Equal(got, want) {
				return m
			}
		}
	}
	t.Fatalf("no %s%v", name, want)
	return nil
}

// histOf returns the histogram point with exactly attrs.
func histOf(t testing.TB, m metricdata.Metrics, kv ...attribute.KeyValue) metricdata.HistogramDataPoint[float64] {
	t.Helper()
	want := attribute.NewSet(kv...)
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is not a float64 histogram", m.Name)
	for _, p := range h.DataPoints {
		if p.Attributes.Equals(&want) {
			return p
		}
	}
	t.Fatalf("%s has no point %v", m.Name, want.Encoded(attribute.DefaultEncoder()))
	return metricdata.HistogramDataPoint[float64]{}
}

func TestMetricsRecordEveryLoaderAtZeroFirst(t *testing.T) {
	e := newOtelEnv(t, nil)
	om, err := otelcache.NewMetrics(otelcache.WithMeterProvider(e.mp))
	require.NoError(t, err)
	om.Count("quiet", cache.EventBreakerOpen)
	om.InvalidationsPending("quiet", 3)
	rm := e.collect(t)
	loader := attribute.String("loader", "quiet")
	require.EqualValues(t, 0, sumOf(t, metricOf(t, rm, "cache.requests"), loader, attribute.String("result", "hit")))
	require.EqualValues(t, 0, sumOf(t, metricOf(t, rm, "cache.loads"), loader, attribute.String("result", "error")))
	require.EqualValues(t, 1, sumOf(t, metricOf(t, rm, "cache.events"), loader, attribute.String("event", "breaker_open")))
	require.EqualValues(t, int64(cache.BreakerOpen), gaugeOf(t, metricOf(t, rm, "cache.breaker.state"), loader))
	require.EqualValues(t, 3, gaugeOf(t, metricOf(t, rm, "cache.invalidations.pending"), loader))
	for _, sm := range rm.ScopeMetrics {
		require.Equal(t, otelcache.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			require.True(t, strings.HasPrefix(m.Name, "cache."), m.Name)
		}
	}
}
