package otelcache_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/otelcache"
)

func TestMain(m *testing.M) {
	// Loaders log to slog.Default; the faults the tests cause on purpose
	// would fill the output.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// user is the value type of the tests.
type user struct {
	Name string `json:"name"`
}

// db is an in-memory stand-in for a table; fail, when set, fails loads.
type db struct {
	mu   sync.Mutex // protects rows, fail
	rows map[string]user
	fail error
}

func newDB(rows map[string]user) *db { return &db{rows: rows} }

func (d *db) load(_ context.Context, key string) (user, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return user{}, d.fail
	}
	u, ok := d.rows[key]
	if !ok {
		return user{}, cache.ErrNotFound
	}
	return u, nil
}

func (d *db) loadMany(ctx context.Context, keys []string) (map[string]user, error) {
	out := map[string]user{}
	for _, k := range keys {
		u, err := d.load(ctx, k)
		switch {
		case errors.Is(err, cache.ErrNotFound):
		case err != nil:
			return nil, err
		default:
			out[k] = u
		}
	}
	return out, nil
}

func (d *db) setFail(err error) {
	d.mu.Lock()
	d.fail = err
	d.mu.Unlock()
}

// otelEnv is an SDK TracerProvider and MeterProvider that keep what they
// record in memory.
type otelEnv struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newOtelEnv(t testing.TB, sampler sdktrace.Sampler) *otelEnv {
	t.Helper()
	if sampler == nil {
		sampler = sdktrace.AlwaysSample()
	}
	e := &otelEnv{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	e.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans), sdktrace.WithSampler(sampler))
	e.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	t.Cleanup(func() {
		_ = e.tp.Shutdown(context.Background())
		_ = e.mp.Shutdown(context.Background())
	})
	return e
}

// fakeRedis returns a client of a miniredis.
func fakeRedis(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return mr, rdb
}

// newLoader returns a Loader of d on rdb traced and measured by e.
func newLoader(t testing.TB, rdb redis.UniversalClient, d *db, e *otelEnv, opts *cache.Options, tracerOpts ...otelcache.Option) *cache.Loader[user] {
	t.Helper()
	o := cache.Options{}
	if opts != nil {
		o = *opts
	}
	o.Tracer = otelcache.NewTracer(append([]otelcache.Option{otelcache.WithTracerProvider(e.tp)}, tracerOpts...)...)
	m, err := otelcache.NewMetrics(otelcache.WithMeterProvider(e.mp))
	require.NoError(t, err)
	o.Recorder = m
	if o.RedisTimeout == 0 {
		o.RedisTimeout = 2 * time.Second // not the machine's load: see the root tests
	}
	l, err := cache.NewBatch(rdb, "user", d.loadMany, &o)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// ended waits until n spans named name have ended, and returns them.
func (e *otelEnv) ended(t testing.TB, name string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out []sdktrace.ReadOnlySpan
		for _, s := range e.spans.Ended() {
			if s.Name() == name {
				out = append(out, s)
			}
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s spans ended, want %d", len(out), name, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reset forgets the spans recorded so far.
func (e *otelEnv) reset() { e.spans.Reset() }

// attrs returns a span's attributes as a map.
func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// eventNames returns the names of a span's events.
func eventNames(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, ev := range s.Events() {
		out = append(out, ev.Name)
	}
	return out
}

// collect returns what the MeterProvider recorded.
func (e *otelEnv) collect(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, e.reader.Collect(context.Background(), &rm))
	return rm
}

// metricOf returns the metric named name.
func metricOf(t testing.TB, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return metricdata.Metrics{}
}

// sumOf returns the value of the counter point with exactly attrs.
func sumOf(t testing.TB, m metricdata.Metrics, kv ...attribute.KeyValue) int64 {
	t.Helper()
	want := attribute.NewSet(kv...)
	sum, ok := m.Data.(metricdata.Sum[int64])
	require.True(t, ok, "%s is not an int64 sum", m.Name)
	for _, p := range sum.DataPoints {
		if p.Attributes.Equals(&want) {
			return p.Value
		}
	}
	t.Fatalf("%s has no point %v", m.Name, want.Encoded(attribute.DefaultEncoder()))
	return 0
}

// gaugeOf returns the value of the gauge point with exactly attrs.
func gaugeOf(t testing.TB, m metricdata.Metrics, kv ...attribute.KeyValue) int64 {
	t.Helper()
	want := attribute.NewSet(kv...)
	g, ok := m.Data.(metricdata.Gauge[int64])
	require.True(t, ok, "%s is not an int64 gauge", m.Name)
	for _, p := range g.DataPoints {
		if p.Attributes.Equals(&want) {
			return p.Value
		}
	}
	t.Fatalf("%s has no point %v", m.Name, want.Encoded(attribute.DefaultEncoder()))
	return 0
}

var (
	loaderAttr = attribute.String("loader", "user")
	hitAttr    = attribute.String("result", "hit")
)
