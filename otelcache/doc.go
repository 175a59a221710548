// Package otelcache connects a cache.Loader to OpenTelemetry: a Tracer
// that follows its operations with spans, and Metrics, a cache.Recorder
// with the same metrics as cache.Prometheus.
//
//	tracer := otelcache.NewTracer(otelcache.WithTracerProvider(tp))
//	metrics, err := otelcache.NewMetrics(otelcache.WithMeterProvider(mp))
//	...
//	users, err := cache.New(rdb, "user", loadUser, &cache.Options{
//		Tracer:   tracer,
//		Recorder: metrics,
//	})
//
// # Spans
//
// Each Get, GetMany, Set, Invalidate (and InvalidateVersions) and
// WriteThrough gets a span, named "cache.Get" and so on, with the
// loader's name (cache.loader) and what happened: a Get's result
// (cache.result: hit, miss, negative_hit, stale, bypass) and span events
// for lease waits, coalesced waits, background refreshes started, values
// migrated from a previous key format, refused stale sets and queued
// invalidations; a GetMany counts them per key as integer attributes
// (cache.hit, cache.miss, ...). A failed operation's span has status
// Error and an error.type (load_error, write_error, redis_error, queued,
// panic, ...); its message is not recorded, because the library's error
// messages name the key. ErrNotFound is an answer, not a failure.
//
// Every call of the LoadFunc or BatchLoadFunc is a "cache.load" child of
// the operation that made it, and WriteThrough's write function runs
// inside the "cache.WriteThrough" span: database spans (otelsql, ...) nest
// under them. Background refreshes ("cache.refresh") and sampled
// consistency checks ("cache.sample") start traces of their own, linked
// to the Get that started them: that Get has returned by the time they
// run.
//
// Keys stay out of spans. WithHashedKeys adds an HMAC of the key
// (cache.key.hash), so that the spans of one key can be found.
//
// # With redisotel
//
// The library's Redis calls take the operation's context, so the spans of
// github.com/redis/go-redis/extra/redisotel/v9 nest under the cache's:
//
//	err := redisotel.InstrumentTracing(rdb, redisotel.WithDBStatement(false))
//
// WARNING: redisotel records every command with its arguments by default
// (WithDBStatement(true)). The cache's fills, Sets and WriteThroughs send
// the whole encoded value as an argument of EVALSHA, so every span of
// such a call would carry the row — personal data, secrets, megabytes —
// and the keys. Pass WithDBStatement(false).
//
// Concurrent Gets of different keys share pipelined reads (at most two
// reads are in flight per Loader; the others wait and go as one
// pipeline): a pipeline's span is the child of the Get that sent it.
//
// # Cost
//
// Without a Tracer a Loader allocates nothing for tracing. With one, a
// hit costs a span (see BENCHMARKS.md in the repository for the measured
// overhead); sample with the TracerProvider's sampler to pay it for a
// fraction of requests: a span not sampled records nothing.
package otelcache
