package otelcache_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	l.SetReadBypass(true)
	_, _ = l.Get(ctx, "ada")

	rm := e.collect(t)
	loader := attribute.String("loader", "user")
	requests := metricOf(t, rm, "cache.requests")
	events := metricOf(t, rm, "cache.events")
	for ev := cache.EventHit; ev.String() != "unknown"; ev++ {
		var otelN int64
		var promN float64
		if ev <= cache.EventBypass {
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
	h, ok := dur.Data.(metricdata.Histogram[float64])
	require.True(t, ok)
	require.Len(t, h.DataPoints, 1)
	require.EqualValues(t, st.Loads, h.DataPoints[0].Count)
	require.Len(t, h.DataPoints[0].Bounds, 16)
	require.InDelta(t, 0.0005, h.DataPoints[0].Bounds[0], 1e-12)

	require.EqualValues(t, 1, gaugeOf(t, metricOf(t, rm, "cache.read_bypass"), loader))
	require.EqualValues(t, 0, gaugeOf(t, metricOf(t, rm, "cache.breaker.state"), loader))
	require.EqualValues(t, 0, gaugeOf(t, metricOf(t, rm, "cache.invalidations.pending"), loader))
}

// promValue returns the value of the counter name{loader="user",label=value}.
func promValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := 0
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "loader" && lp.GetValue() == "user" || lp.GetName() == label && lp.GetValue() == value {
					ok++
				}
			}
			if ok == 2 {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
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
