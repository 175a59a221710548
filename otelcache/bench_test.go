package otelcache_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/otelcache"
)

// BenchmarkHitTracing measures a hit on the real Redis without a Tracer,
// with one whose spans are sampled out, and with one recording every span
// (to a no-op processor: the cost of the spans, not of exporting them),
// in one run so that their ratios can be compared.
func BenchmarkHitTracing(b *testing.B) {
	rdb := testenv.Redis(b, "")
	prefix := testenv.Prefix(b, rdb, "otel:")
	for _, bc := range []struct {
		name    string
		sampler sdktrace.Sampler // nil: no Tracer
	}{
		{"off", nil},
		{"sampled out", sdktrace.NeverSample()},
		{"on", sdktrace.AlwaysSample()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := &cache.Options{Prefix: prefix + bc.name + ":", TTL: time.Hour}
			if bc.sampler != nil {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(bc.sampler),
					sdktrace.WithSpanProcessor(nopProcessor{}))
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
			ctx := context.Background()
			if _, err := l.Get(ctx, "42"); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Get(ctx, "42"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// nopProcessor ends spans without exporting them.
type nopProcessor struct{}

func (nopProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (nopProcessor) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (nopProcessor) Shutdown(context.Context) error                  { return nil }
func (nopProcessor) ForceFlush(context.Context) error                { return nil }
