package otelcache

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the tracer and meter this
// package gets from its providers.
const ScopeName = "github.com/f4df6ac3/cache/otelcache"

// Option configures NewTracer and NewMetrics. Options follow the
// OpenTelemetry instrumentation libraries' convention (otelhttp,
// redisotel), so that the cache reads like its neighbours.
type Option interface {
	apply(*config)
}

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	hashKeys       bool
	hashSecret     []byte
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

func newConfig(opts []Option) config {
	c := config{}
	for _, o := range opts {
		o.apply(&c)
	}
	if c.tracerProvider == nil {
		c.tracerProvider = otel.GetTracerProvider()
	}
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	return c
}

// WithTracerProvider sets the TracerProvider NewTracer gets its tracer
// from.
// default: otel.GetTracerProvider()
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) { c.tracerProvider = tp })
}

// WithMeterProvider sets the MeterProvider NewMetrics gets its meter from.
// default: otel.GetMeterProvider()
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.meterProvider = mp })
}

// WithHashedKeys adds to the spans of operations on one key the attribute
// cache.key.hash: the first 8 bytes, in hex, of HMAC-SHA256(secret, key).
// Equal keys get equal hashes, so the spans of one key can be found
// without the key being exported.
//
// WARNING: with an empty or known secret the hash of a guessable key (a
// user id, an e-mail address) is guessed by hashing candidates; keep the
// secret secret, and the same across processes whose traces are compared.
// default: no key attribute at all
func WithHashedKeys(secret []byte) Option {
	s := append([]byte(nil), secret...)
	return optionFunc(func(c *config) { c.hashKeys, c.hashSecret = true, s })
}
