package otelcache

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/f4df6ac3/cache"
)

// Metrics is a cache.Recorder (and cache.PendingRecorder, RedisRecorder
// and WriteRecorder) that records a Loader's metrics with OpenTelemetry
// instruments: the same metrics, with the same attributes, as
// cache.Prometheus exports —
//
//	cache.requests{loader,result}            counter: Gets by result: hit, local_hit, miss, negative_hit, stale, bypass
//	cache.events{loader,event}               counter: every other cache.Event
//	cache.loads{loader,result}               counter: LoadFunc calls: ok, not_found, error
//	cache.load.duration{loader,result} (s)   histogram: LoadFunc latency by result, cache.Prometheus's buckets
//	cache.redis.duration{loader,result} (s)  histogram: Redis call latency: ok, error
//	cache.writes{loader,op,result}           counter: Set, Invalidate, WriteThrough calls by result
//	cache.breaker.state{loader}              gauge: 0 closed, 1 half-open, 2 open
//	cache.read_bypass{loader}                gauge: 1 while SetReadBypass(true)
//	cache.invalidations.pending{loader}      gauge: invalidations queued for retry
//
// OpenTelemetry's Prometheus exporter exports them with cache.Prometheus's
// names, types and labels (cache_requests_total,
// cache_load_duration_seconds, ...; with its WithoutScopeInfo option, else
// it adds otel_scope_* labels). Attributes are
// bounded: the loader's name, an operation, a result or event; never a
// key.
//
// Several Loaders may share one Metrics. Each loader's series are
// recorded at 0 when it first reports, as cache.Prometheus does.
type Metrics struct {
	requests metric.Int64Counter
	events   metric.Int64Counter
	loads    metric.Int64Counter
	duration metric.Float64Histogram
	redis    metric.Float64Histogram
	writes   metric.Int64Counter
	breaker  metric.Int64Gauge
	bypass   metric.Int64Gauge
	pending  metric.Int64Gauge

	loaders sync.Map // loader name → *loaderSets
}

// loadBuckets and redisBuckets are cache.Prometheus's latency buckets:
// 0.5ms × 2^i and 0.1ms × 2^i, i < 16.
var (
	loadBuckets  = exponential(0.0005)
	redisBuckets = exponential(0.0001)
)

func exponential(start float64) []float64 {
	b := make([]float64, 16)
	for i := range b {
		b[i] = start * float64(uint(1)<<i)
	}
	return b
}

// NewMetrics creates the instruments from the options' MeterProvider
// (WithMeterProvider; the global one by default).
func NewMetrics(opts ...Option) (*Metrics, error) {
	c := newConfig(opts)
	meter := c.meterProvider.Meter(ScopeName)
	m := &Metrics{}
	var err, e error
	m.requests, e = meter.Int64Counter("cache.requests",
		metric.WithDescription("Gets by result: hit, local_hit, miss, negative_hit, stale, bypass."))
	err = errors.Join(err, e)
	m.events, e = meter.Int64Counter("cache.events",
		metric.WithDescription("Things the cache did or prevented: coalesced, lease_wait, stale_set_prevented, corrupt_entry, redis_error, oversize, ..."))
	err = errors.Join(err, e)
	m.loads, e = meter.Int64Counter("cache.loads",
		metric.WithDescription("LoadFunc calls by result: ok, not_found, error."))
	err = errors.Join(err, e)
	m.duration, e = meter.Float64Histogram("cache.load.duration", metric.WithUnit("s"),
		metric.WithDescription("LoadFunc latency by result: ok, not_found, error."), metric.WithExplicitBucketBoundaries(loadBuckets...))
	err = errors.Join(err, e)
	m.redis, e = meter.Float64Histogram("cache.redis.duration", metric.WithUnit("s"),
		metric.WithDescription("Latency of the cache's Redis calls (one round trip: a command, script or pipeline) by result: ok (Redis answered), error (Redis failed)."),
		metric.WithExplicitBucketBoundaries(redisBuckets...))
	err = errors.Join(err, e)
	m.writes, e = meter.Int64Counter("cache.writes",
		metric.WithDescription("Set, Invalidate and WriteThrough calls (op: set, invalidate, write_through) by result: stored, invalidated, queued, error."))
	err = errors.Join(err, e)
	m.breaker, e = meter.Int64Gauge("cache.breaker.state",
		metric.WithDescription("Circuit breaker around Redis: 0 closed, 1 half-open, 2 open."))
	err = errors.Join(err, e)
	m.bypass, e = meter.Int64Gauge("cache.read_bypass",
		metric.WithDescription("1 while Redis reads are bypassed (incident mode)."))
	err = errors.Join(err, e)
	m.pending, e = meter.Int64Gauge("cache.invalidations.pending",
		metric.WithDescription("Invalidations queued for retry because Redis could not be reached; other processes may serve those keys stale until they land."))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// numEvents is the number of cache.Event values.
var numEvents = func() int {
	n := 0
	for cache.Event(n).String() != "unknown" {
		n++
	}
	return n
}()

var loadResults = []string{"ok", "not_found", "error"}

// loaderSets are one loader's attribute sets, built once: recording with
// them allocates nothing.
type loaderSets struct {
	event    [][]metric.AddOption    // per cache.Event: {loader, result} or {loader, event}
	load     [][]metric.AddOption    // per loadResults: {loader, result}
	loadTime [][]metric.RecordOption // per loadResults: {loader, result}
	redis    [][]metric.RecordOption // per redisResults: {loader, result}
	writes   [][][]metric.AddOption  // per op of writeOps, per cache.WriteResult: {loader, op, result}
	loader   []metric.RecordOption
}

var redisResults = []string{"ok", "error"}

// writeOps are the operations cache.WriteRecorder counts, with their
// labels.
var writeOps = []struct {
	op    cache.Op
	label string
	// results are those the operation can end with
	results []cache.WriteResult
}{
	{cache.OpSet, "set", []cache.WriteResult{cache.WriteStored, cache.WriteInvalidated, cache.WriteFailed}},
	{cache.OpInvalidate, "invalidate", []cache.WriteResult{cache.WriteInvalidated, cache.WriteQueued}},
	{cache.OpWriteThrough, "write_through", []cache.WriteResult{cache.WriteStored, cache.WriteInvalidated, cache.WriteQueued, cache.WriteFailed}},
}

// numWriteResults is the number of cache.WriteResult values.
var numWriteResults = func() int {
	n := 0
	for cache.WriteResult(n).String() != "unknown" {
		n++
	}
	return n
}()

// sets returns loader's attribute sets, recording its series at 0 the
// first time.
func (m *Metrics) sets(loader string) *loaderSets {
	if s, ok := m.loaders.Load(loader); ok {
		return s.(*loaderSets)
	}
	l := attribute.String("loader", loader)
	s := &loaderSets{
		event:    make([][]metric.AddOption, numEvents),
		load:     make([][]metric.AddOption, len(loadResults)),
		loadTime: make([][]metric.RecordOption, len(loadResults)),
		redis:    make([][]metric.RecordOption, len(redisResults)),
		writes:   make([][][]metric.AddOption, len(writeOps)),
		loader:   []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(l))},
	}
	for e := range numEvents {
		ev := cache.Event(e)
		key := "event"
		if isRequest(ev) {
			key = "result"
		}
		s.event[e] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(l, attribute.String(key, ev.String())))}
	}
	for i, r := range loadResults {
		set := metric.WithAttributeSet(attribute.NewSet(l, attribute.String("result", r)))
		s.load[i] = []metric.AddOption{set}
		s.loadTime[i] = []metric.RecordOption{set}
	}
	for i, r := range redisResults {
		s.redis[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(l, attribute.String("result", r)))}
	}
	for i, op := range writeOps {
		s.writes[i] = make([][]metric.AddOption, numWriteResults)
		for r := range numWriteResults {
			s.writes[i][r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(l,
				attribute.String("op", op.label), attribute.String("result", cache.WriteResult(r).String())))}
		}
	}
	if prev, loaded := m.loaders.LoadOrStore(loader, s); loaded {
		return prev.(*loaderSets)
	}
	ctx := context.Background()
	for e := range numEvents {
		if isRequest(cache.Event(e)) {
			m.requests.Add(ctx, 0, s.event[e]...)
		} else {
			m.events.Add(ctx, 0, s.event[e]...)
		}
	}
	for i := range loadResults {
		m.loads.Add(ctx, 0, s.load[i]...)
	}
	for i, op := range writeOps {
		for _, r := range op.results {
			m.writes.Add(ctx, 0, s.writes[i][r]...)
		}
	}
	m.breaker.Record(ctx, 0, s.loader...)
	m.bypass.Record(ctx, 0, s.loader...)
	m.pending.Record(ctx, 0, s.loader...)
	return s
}

// Count implements cache.Recorder.
func (m *Metrics) Count(loader string, e cache.Event) {
	if e < 0 || int(e) >= numEvents {
		return
	}
	s := m.sets(loader)
	ctx := context.Background()
	if isRequest(e) {
		m.requests.Add(ctx, 1, s.event[e]...)
		return
	}
	m.events.Add(ctx, 1, s.event[e]...)
	switch e {
	case cache.EventBreakerOpen:
		m.breaker.Record(ctx, int64(cache.BreakerOpen), s.loader...)
	case cache.EventBreakerHalfOpen:
		m.breaker.Record(ctx, int64(cache.BreakerHalfOpen), s.loader...)
	case cache.EventBreakerClosed:
		m.breaker.Record(ctx, int64(cache.BreakerClosed), s.loader...)
	case cache.EventReadBypassOn:
		m.bypass.Record(ctx, 1, s.loader...)
	case cache.EventReadBypassOff:
		m.bypass.Record(ctx, 0, s.loader...)
	}
}

// ObserveLoad implements cache.Recorder.
func (m *Metrics) ObserveLoad(loader string, d time.Duration, err error) {
	s := m.sets(loader)
	i := 0
	switch {
	case errors.Is(err, cache.ErrNotFound):
		i = 1
	case err != nil:
		i = 2
	}
	ctx := context.Background()
	m.loads.Add(ctx, 1, s.load[i]...)
	m.duration.Record(ctx, d.Seconds(), s.loadTime[i]...)
}

// ObserveRedis implements cache.RedisRecorder.
func (m *Metrics) ObserveRedis(loader string, d time.Duration, err error) {
	i := 0
	if err != nil {
		i = 1
	}
	m.redis.Record(context.Background(), d.Seconds(), m.sets(loader).redis[i]...)
}

// CountWrite implements cache.WriteRecorder.
func (m *Metrics) CountWrite(loader string, op cache.Op, r cache.WriteResult) {
	if r < 0 || int(r) >= numWriteResults {
		return
	}
	for i, w := range writeOps {
		if w.op == op {
			m.writes.Add(context.Background(), 1, m.sets(loader).writes[i][r]...)
			return
		}
	}
}

// InvalidationsPending implements cache.PendingRecorder.
func (m *Metrics) InvalidationsPending(loader string, n int) {
	m.pending.Record(context.Background(), int64(n), m.sets(loader).loader...)
}

var (
	_ cache.Recorder        = (*Metrics)(nil)
	_ cache.PendingRecorder = (*Metrics)(nil)
	_ cache.RedisRecorder   = (*Metrics)(nil)
	_ cache.WriteRecorder   = (*Metrics)(nil)
	_ cache.Tracer          = (*Tracer)(nil)
)
