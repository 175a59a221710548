package otelcache_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/otelcache"
)

// Exported through OpenTelemetry's Prometheus exporter, the metrics have
// the names, types and labels of cache.Prometheus's: dashboards and alerts
// work on either.
func TestPrometheusExporterNamesAsTheAdapter(t *testing.T) {
	families := func(reg *prometheus.Registry) map[string]string {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		out := map[string]string{}
		for _, mf := range mfs {
			var labels []string
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if !slices.Contains(labels, lp.GetName()) {
						labels = append(labels, lp.GetName())
					}
				}
			}
			slices.Sort(labels)
			out[mf.GetName()] = mf.GetType().String() + " " + strings.Join(labels, ",")
		}
		return out
	}

	adapterReg := prometheus.NewRegistry()
	adapter, err := cache.NewPrometheus(adapterReg)
	require.NoError(t, err)

	otelReg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(otelReg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	require.NoError(t, err)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	om, err := otelcache.NewMetrics(otelcache.WithMeterProvider(mp))
	require.NoError(t, err)

	for _, r := range []interface {
		cache.Recorder
		cache.PendingRecorder
		cache.RedisRecorder
		cache.WriteRecorder
	}{adapter, om} {
		r.Count("user", cache.EventHit)
		r.Count("user", cache.EventBreakerOpen)
		r.ObserveLoad("user", 1, nil)
		r.ObserveRedis("user", 1, nil)
		r.CountWrite("user", cache.OpSet, cache.WriteStored)
		r.InvalidationsPending("user", 1)
	}
	require.Equal(t, families(adapterReg), families(otelReg))
}
