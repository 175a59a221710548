package cache

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// localCounterNames are the cache_local_* counters, in the order of
// localCounters' values.
var localCounterNames = [...]struct{ name, help string }{
	{"cache_local_fills_total", "In-process tier: values read from Redis that entered the tier."},
	{"cache_local_fills_refused_total", "In-process tier: values read from Redis that were refused because an invalidation or a stream break came after their read was sent."},
	{"cache_local_invalidations_total", "In-process tier: keys invalidated, by the invalidation stream and by this process's writes."},
	{"cache_local_invalidation_messages_total", "In-process tier: invalidation messages received from Redis on the stream."},
	{"cache_local_flushes_total", "In-process tier: times the tier was emptied: an invalidation stream broke (connection lost, output-buffer limit, restart, barrier timeout, its server no longer a master) or, on a Cluster, the set of masters changed."},
	{"cache_local_barriers_total", "In-process tier: barrier PINGs sent on the invalidation stream."},
	{"cache_local_barrier_waits_total", "In-process tier: strict Gets (MaxLag 0) that waited for a barrier."},
	{"cache_local_barrier_waits_failed_total", "In-process tier: barrier waits that failed (the barrier did not return within the Get's Redis budget, or the stream was down); those Gets read Redis."},
}

// localCounts are the values of the cache_local_* counters.
type localCounts [len(localCounterNames)]uint64

// localCounters returns st's counters, in the order of localCounterNames.
func localCounters(st LocalStats) localCounts {
	return localCounts{st.Fills, st.FillsRefused, st.Invalidations, st.Messages,
		st.Flushes, st.Barriers, st.BarrierWaits, st.WaitsFailed}
}

func (c *localCounts) add(o localCounts) {
	for i := range c {
		c[i] += o[i]
	}
}

// localCollector reads the in-process tiers' LocalStats when the registry
// collects: no cost on the Get path. One is shared by every Prometheus
// registered on one registry (see promreg).
type localCollector struct {
	counters                [len(localCounterNames)]*prometheus.Desc
	entries, bytes, up, lag *prometheus.Desc
	mu                      sync.Mutex
	loaders                 map[string]*localLoaders // by loader name
}

// localLoaders are the tiers of the Loaders of one name.
type localLoaders struct {
	live map[*localAttachment]struct{}
	// retired are the final counts of the closed ones, so that the
	// counters never go down.
	retired localCounts
}

type localAttachment struct {
	stats func() LocalStats
}

func newLocalCollector() *localCollector {
	labels := []string{"loader"}
	c := &localCollector{
		entries: prometheus.NewDesc("cache_local_entries", "In-process tier: entries held (an estimate).", labels, nil),
		bytes:   prometheus.NewDesc("cache_local_bytes", "In-process tier: bytes held (keys, encoded values and a fixed overhead per entry), as weighed against LocalOptions.MaxBytes.", labels, nil),
		up:      prometheus.NewDesc("cache_local_up", "In-process tier: 1 while its invalidation stream is subscribed and a barrier returned on its connection; while 0 the tier is bypassed (Gets read Redis).", labels, nil),
		lag:     prometheus.NewDesc("cache_local_lag_seconds", "In-process tier: how long ago the last returned barrier was sent (0 while the stream is down). Barriers are sent while Gets use the tier: it grows while the tier is idle.", labels, nil),
		loaders: map[string]*localLoaders{},
	}
	for i, m := range localCounterNames {
		c.counters[i] = prometheus.NewDesc(m.name, m.help, labels, nil)
	}
	return c
}

// attach adds a tier of loader; detach removes it, keeping its counts.
func (c *localCollector) attach(loader string, stats func() LocalStats) (detach func()) {
	a := &localAttachment{stats: stats}
	c.mu.Lock()
	ll := c.loaders[loader]
	if ll == nil {
		ll = &localLoaders{live: map[*localAttachment]struct{}{}}
		c.loaders[loader] = ll
	}
	ll.live[a] = struct{}{}
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			final := localCounters(stats())
			c.mu.Lock()
			delete(ll.live, a)
			ll.retired.add(final)
			c.mu.Unlock()
		})
	}
}

// Describe implements prometheus.Collector.
func (c *localCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d
	}
	ch <- c.entries
	ch <- c.bytes
	ch <- c.up
	ch <- c.lag
}

// Collect implements prometheus.Collector.
func (c *localCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, ll := range c.loaders {
		counts := ll.retired
		var entries int
		var bytes uint64
		up, lag := len(ll.live) > 0, 0.0
		for a := range ll.live {
			st := a.stats()
			counts.add(localCounters(st))
			entries += st.Entries
			bytes += st.Bytes
			up = up && st.Up
			lag = max(lag, st.Lag.Seconds())
		}
		for i, d := range c.counters {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(counts[i]), name)
		}
		if len(ll.live) == 0 {
			continue // closed: no tier to report on
		}
		upv := 0.0
		if up {
			upv = 1
		}
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(entries), name)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(bytes), name)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, upv, name)
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, lag, name)
	}
}
