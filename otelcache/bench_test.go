package otelcache_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/otelcache"
)

// tracings are the variants the benchmarks compare: no Tracer, a Tracer
// whose spans are all sampled out, and one recording every span (to a
// no-op processor: the cost of the spans, not of exporting them).
var tracings = []struct {
	name    string
	sampler sdktrace.Sampler // nil: no Tracer
}{
	{"off", nil},
	{"sampled-out", sdktrace.NeverSample()},
	{"on", sdktrace.AlwaysSample()},
}

// hitLoader returns a Loader on rdb traced with sampler (none when nil)
// whose key "42" is cached.
func hitLoader(b *testing.B, rdb redis.UniversalClient, prefix string, sampler sdktrace.Sampler) *cache.Loader[user] {
	opts := &cache.Options{Prefix: prefix, TTL: time.Hour}
	if sampler != nil {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithSpanProcessor(nopProcessor{}))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		opts.Tracer = otelcache.NewTracer(otelcache.WithTracerProvider(tp))
	}
	l, err := cache.New(rdb, "bench", func(context.Context, string) (user, error) {
		return user{Name: "Ada"}, nil
	}, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if _, err := l.Get(context.Background(), "42"); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkHitTracing measures a hit on the real Redis in each tracing
// variant, for its allocations.
func BenchmarkHitTracing(b *testing.B) {
	rdb := testenv.Redis(b, "")
	prefix := testenv.Prefix(b, rdb, "otel:")
	for _, tc := range tracings {
		b.Run(tc.name, func(b *testing.B) {
			l := hitLoader(b, rdb, prefix+tc.name+":", tc.sampler)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Get(ctx, "42"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHitTracingInterleaved times hits of the three variants in turn,
// one of each per iteration (each first in turn), so that the machine's load (a shared,
// busy machine moves a round trip by tens of percent from one second to
// the next) weighs on all three alike; it reports each variant's mean
// time and its ratio to "off".
func BenchmarkHitTracingInterleaved(b *testing.B) {
	rdb := testenv.Redis(b, "")
	prefix := testenv.Prefix(b, rdb, "otel:")
	loaders := make([]*cache.Loader[user], len(tracings))
	for i, tc := range tracings {
		loaders[i] = hitLoader(b, rdb, prefix+tc.name+":", tc.sampler)
	}
	ctx := context.Background()
	spent := make([]time.Duration, len(tracings))
	n := 0
	for b.Loop() {
		for j := range loaders {
			i := (n + j) % len(loaders) // each variant first in turn
			l := loaders[i]
			start := time.Now()
			if _, err := l.Get(ctx, "42"); err != nil {
				b.Fatal(err)
			}
			spent[i] += time.Since(start)
		}
		n++
	}
	for i, tc := range tracings {
		b.ReportMetric(float64(spent[i].Nanoseconds())/float64(n), tc.name+"-ns/hit")
		if i > 0 {
			b.ReportMetric(float64(spent[i])/float64(spent[0]), tc.name+"/off")
		}
	}
}

// BenchmarkSpan is the CPU cost of following one hit with a recorded span,
// without Redis: Start, the hit's event, End.
func BenchmarkSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(nopProcessor{}))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := otelcache.NewTracer(otelcache.WithTracerProvider(tp))
	ctx := context.Background()
	op := cache.Operation{Op: cache.OpGet, Loader: "bench", Key: "42", Keys: 1}
	b.ReportAllocs()
	for b.Loop() {
		_, sp := tr.Start(ctx, op)
		sp.Event(cache.EventHit)
		sp.End(nil)
	}
}

// nopProcessor ends spans without exporting them.
type nopProcessor struct{}

func (nopProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (nopProcessor) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (nopProcessor) Shutdown(context.Context) error                  { return nil }
func (nopProcessor) ForceFlush(context.Context) error                { return nil }
