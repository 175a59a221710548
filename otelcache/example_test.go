package otelcache_test

import (
	"context"
	"fmt"
	"log"
	"slices"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/otelcache"
)

func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()

	// In production: the SDK with an exporter (OTLP, ...). Here: in memory.
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	metrics, err := otelcache.NewMetrics(otelcache.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	users := cache.Must(cache.New(rdb, "user", func(ctx context.Context, id string) (string, error) {
		return "Ada", nil // SELECT name FROM users WHERE id = ?
	}, &cache.Options{
		Tracer:   otelcache.NewTracer(otelcache.WithTracerProvider(tp)),
		Recorder: metrics,
	}))
	defer users.Close()

	ctx := context.Background()
	_, _ = users.Get(ctx, "42") // miss: loads
	_, _ = users.Get(ctx, "42") // hit

	for _, s := range spans.Ended() {
		if r, ok := attrs(s)[otelcache.AttrResult]; ok {
			fmt.Println(s.Name(), r.String())
		} else {
			fmt.Println(s.Name())
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "cache.requests" {
				continue
			}
			var lines []string
			for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
				if p.Value > 0 {
					r, _ := p.Attributes.Value("result")
					lines = append(lines, fmt.Sprintf("cache.requests{result=%s} %d", r.String(), p.Value))
				}
			}
			slices.Sort(lines)
			for _, l := range lines {
				fmt.Println(l)
			}
		}
	}
	// Output:
	// cache.load
	// cache.Get miss
	// cache.Get hit
	// cache.requests{result=hit} 1
	// cache.requests{result=miss} 1
}
