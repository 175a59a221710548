package cache

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// gatherLoader returns the values of the families of reg for loader:
// counters and gauges by name, and histograms' sample counts by name.
func gatherLoader(t *testing.T, reg prometheus.Gatherer, loader string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			ok := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "loader" && lp.GetValue() == loader {
					ok = true
				}
			}
			if !ok {
				continue
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[mf.GetName()] += m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[mf.GetName()] += m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[mf.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestPrometheusLocalTier: a Loader with the tier on, a tier hit and
// another process's invalidation show in the cache_local_* metrics as
// LocalStats counts them; Close keeps the counters and drops the gauges.
func TestPrometheusLocalTier(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	p, err := NewPrometheus(reg)
	require.NoError(t, err)
	p2, err := NewPrometheus(reg)
	require.NoError(t, err, "a second adapter on the same registry shares the tier's collector")
	require.Same(t, p.local, p2.local)

	a, b, tb := localPair(t, LocalOptions{}, &Options{Recorder: p})
	tb.put("k", "v1")
	for i := range 3 { // load, Redis hit (fills the tier), tier hit
		_, err := a.Get(ctx, "k")
		require.NoError(t, err)
		if i == 0 {
			settle(t, a)
		}
	}
	require.EqualValues(t, 1, a.Stats().LocalHits)
	tb.put("k", "v2")
	require.NoError(t, b.Invalidate(ctx, "k"))
	settle(t, a) // a barrier sent after the Invalidate returned: its message was applied
	st := a.LocalStats()
	require.GreaterOrEqual(t, st.Messages, uint64(1))

	got := gatherLoader(t, reg, "row")
	require.Equal(t, 1.0, got["cache_local_up"], "%v", got)
	require.GreaterOrEqual(t, got["cache_local_fills_total"], 1.0)
	require.GreaterOrEqual(t, got["cache_local_invalidation_messages_total"], float64(st.Messages))
	require.GreaterOrEqual(t, got["cache_local_invalidations_total"], float64(st.Invalidations))
	require.GreaterOrEqual(t, got["cache_local_invalidations_total"], 1.0)
	require.GreaterOrEqual(t, got["cache_local_barriers_total"], float64(st.Barriers))
	require.GreaterOrEqual(t, got["cache_local_barrier_waits_total"], 2.0, "the strict tier hit and settle waited")
	require.LessOrEqual(t, got["cache_local_barrier_waits_failed_total"], got["cache_local_barrier_waits_total"])
	require.GreaterOrEqual(t, got["cache_local_barrier_duration_seconds"], 1.0, "returned barriers are observed")
	require.LessOrEqual(t, got["cache_local_barrier_duration_seconds"], got["cache_local_barriers_total"])
	require.Equal(t, 0.0, got["cache_local_flushes_total"])
	require.GreaterOrEqual(t, got["cache_local_lag_seconds"], 0.0)
	require.Contains(t, got, "cache_local_entries")
	require.Contains(t, got, "cache_local_bytes")
	require.Equal(t, 1.0, got["cache_requests_total"]-float64(a.Stats().Hits+a.Stats().Misses+a.Stats().NegativeHits+a.Stats().Stale+a.Stats().Bypassed), "one local_hit")
	require.NotContains(t, gatherLoader(t, reg, "other"), "cache_local_up", "only Loaders with the tier on")

	// Counts are taken at scrape, so they follow LocalStats.
	fills := got["cache_local_fills_total"]
	_, err = a.Get(ctx, "k") // miss after the invalidation: a new fill once read from Redis
	require.NoError(t, err)
	settle(t, a)
	_, err = a.Get(ctx, "k")
	require.NoError(t, err)
	got = gatherLoader(t, reg, "row")
	require.Equal(t, float64(a.LocalStats().Fills), got["cache_local_fills_total"])
	require.GreaterOrEqual(t, got["cache_local_fills_total"], fills)

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)

	final := a.LocalStats()
	require.NoError(t, a.Close())
	got = gatherLoader(t, reg, "row")
	require.NotContains(t, got, "cache_local_up", "a closed Loader's gauges go")
	require.NotContains(t, got, "cache_local_bytes")
	require.Equal(t, float64(final.Fills), got["cache_local_fills_total"], "its counts stay")
	require.GreaterOrEqual(t, got["cache_local_invalidation_messages_total"], float64(final.Messages))
}

// TestPrometheusLocalSameName: two Loaders of one name add up, and one's
// Close leaves the counters where they were.
func TestPrometheusLocalSameName(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	p, err := NewPrometheus(reg)
	require.NoError(t, err)
	a1, _, tb := localPair(t, LocalOptions{}, &Options{Recorder: p})
	a2, _, _ := localPair(t, LocalOptions{}, &Options{Recorder: p})
	tb.put("k", "v")
	_, err = a1.Get(ctx, "k")
	require.NoError(t, err)
	settle(t, a1)
	_, err = a1.Get(ctx, "k") // fills a1's tier
	require.NoError(t, err)
	got := gatherLoader(t, reg, "row")
	sum := func(f func(LocalStats) uint64) float64 { return float64(f(a1.LocalStats()) + f(a2.LocalStats())) }
	require.Equal(t, sum(func(s LocalStats) uint64 { return s.Fills }), got["cache_local_fills_total"])
	require.GreaterOrEqual(t, got["cache_local_fills_total"], 1.0)
	require.Equal(t, 1.0, got["cache_local_up"])

	before := got["cache_local_fills_total"]
	require.NoError(t, a1.Close())
	require.NoError(t, a1.Close(), "a second Close detaches nothing more")
	got = gatherLoader(t, reg, "row")
	require.Equal(t, before, got["cache_local_fills_total"], "a closed Loader's counts stay")
	require.Equal(t, 1.0, got["cache_local_up"], "the other's gauges remain")
	require.Eventually(t, func() bool { return a2.LocalStats().Up }, 10*time.Second, time.Millisecond)
}
