package otelcache

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/f4df6ac3/cache"
)

// Span attributes.
const (
	// AttrLoader is the Loader's name, on every span.
	AttrLoader = attribute.Key("cache.loader")
	// AttrResult is how a Get was answered: hit, miss, negative_hit,
	// stale or bypass (cache.Event names).
	AttrResult = attribute.Key("cache.result")
	// AttrKeys is how many keys an operation on several keys was about
	// (GetMany, Invalidate of several keys, a batch load).
	AttrKeys = attribute.Key("cache.keys")
	// AttrKeyHash is the key's hash, with WithHashedKeys only.
	AttrKeyHash = attribute.Key("cache.key.hash")
	// AttrLoadResult is how a load ended: ok, not_found or error.
	AttrLoadResult = attribute.Key("cache.load.result")
	// AttrErrorType classifies a failed operation's error (OpenTelemetry's
	// error.type): load_error, write_error, redis_error, redis_unavailable,
	// queued, panic, canceled, deadline_exceeded. The error's message is not
	// recorded: the library's messages name the key.
	AttrErrorType = attribute.Key("error.type")
)

// Tracer is a cache.Tracer that follows a Loader's operations with
// OpenTelemetry spans; set it as cache.Options.Tracer. One Tracer may serve
// any number of Loaders.
//
// Spans are named "cache.Get", "cache.GetMany", "cache.Set",
// "cache.Invalidate", "cache.WriteThrough", "cache.load", "cache.refresh"
// and "cache.sample". A Get's span carries its result (AttrResult) and
// span events for what happened along the way (lease_wait, coalesced,
// refresh, migrated, ...); a GetMany's carries how many keys ended each
// way as integer attributes (cache.hit, cache.miss, cache.lease_wait, ...).
// Loads are children of the operation that ran them. Background refreshes
// and sampled checks are roots of traces of their own, linked to the Get
// that started them, which does not wait for them.
//
// A load shared by several Gets (singleflight, P2) is the child of the Get
// that started it; the others record a coalesced event.
type Tracer struct {
	tracer trace.Tracer
	hash   bool
	secret []byte
	// plain are the start options of a span with no attribute but the
	// loader's name, per loader name: built once, for the common case.
	plain sync.Map // string → []trace.SpanStartOption
}

// numOps is the number of cache.Op values.
var numOps = func() int {
	n := 0
	for cache.Op(n).String() != "unknown" {
		n++
	}
	return n
}()

// NewTracer returns a Tracer from the options' TracerProvider
// (WithTracerProvider; the global one by default).
func NewTracer(opts ...Option) *Tracer {
	c := newConfig(opts)
	return &Tracer{
		tracer: c.tracerProvider.Tracer(ScopeName),
		hash:   c.hashKeys,
		secret: c.hashSecret,
	}
}

var spanNames = func() []string {
	names := make([]string, numOps)
	for i := range names {
		names[i] = "cache." + cache.Op(i).String()
	}
	return names
}()

// Start implements cache.Tracer.
func (t *Tracer) Start(ctx context.Context, op cache.Operation) (context.Context, cache.Span) {
	many := op.Key == "" && op.Keys > 0
	hashed := t.hash && op.Key != ""
	background := op.Op == cache.OpRefresh || op.Op == cache.OpSample
	var opts []trace.SpanStartOption
	if !many && !hashed && !background {
		opts = t.plainOptions(op.Loader)
	} else {
		attrs := make([]attribute.KeyValue, 0, 2)
		attrs = append(attrs, AttrLoader.String(op.Loader))
		if many {
			attrs = append(attrs, AttrKeys.Int(op.Keys))
		}
		if hashed {
			attrs = append(attrs, AttrKeyHash.String(t.hashKey(op.Key)))
		}
		opts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...)}
	}
	if background {
		// The Get that started it has returned, or will without waiting:
		// a trace of its own, linked to that Get.
		opts = append(opts, trace.WithNewRoot())
		if link := trace.LinkFromContext(ctx); link.SpanContext.IsValid() {
			opts = append(opts, trace.WithLinks(link))
		}
	}
	name := "cache.unknown"
	if int(op.Op) >= 0 && int(op.Op) < len(spanNames) {
		name = spanNames[op.Op]
	}
	ctx, s := t.tracer.Start(ctx, name, opts...)
	if !s.IsRecording() {
		return ctx, nil // sampled out: nothing to record
	}
	sp := &span{s: s, op: op.Op}
	if op.Op == cache.OpGetMany {
		sp.counts = new([numEventsMax]atomic.Int32)
	}
	return ctx, sp
}

// plainOptions returns the start options of a span of loader with no
// other attribute.
func (t *Tracer) plainOptions(loader string) []trace.SpanStartOption {
	if o, ok := t.plain.Load(loader); ok {
		return o.([]trace.SpanStartOption)
	}
	o := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(AttrLoader.String(loader))}
	t.plain.Store(loader, o)
	return o
}

func (t *Tracer) hashKey(key string) string {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// span is the cache.Span of one operation.
type span struct {
	s  trace.Span
	op cache.Op
	// counts are the events of a GetMany (nil for other operations),
	// reported as attributes at End: one span event per key would be too
	// many.
	counts *[numEventsMax]atomic.Int32
}

// numEventsMax bounds cache.Event values counted on a span.
const numEventsMax = 64

func (s *span) Event(e cache.Event) {
	if s.op == cache.OpGetMany {
		if e >= 0 && e < numEventsMax {
			s.counts[e].Add(1)
		}
		return
	}
	if isRequest(e) {
		s.s.SetAttributes(AttrResult.String(e.String()))
		return
	}
	s.s.AddEvent(e.String())
}

func (s *span) End(err error) {
	if s.op == cache.OpGetMany {
		for e := range numEventsMax {
			if n := s.counts[e].Load(); n > 0 {
				s.s.SetAttributes(attribute.Int("cache."+cache.Event(e).String(), int(n)))
			}
		}
	}
	if s.op == cache.OpLoad {
		s.s.SetAttributes(AttrLoadResult.String(loadResult(err)))
	}
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		kind := errorType(s.op, err)
		s.s.SetAttributes(AttrErrorType.String(kind))
		s.s.SetStatus(codes.Error, kind)
	}
	s.s.End()
}

// isRequest reports whether e is a Get's result.
func isRequest(e cache.Event) bool {
	return e >= cache.EventHit && e <= cache.EventBypass || e == cache.EventLocalHit
}

func loadResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, cache.ErrNotFound):
		return "not_found"
	}
	return "error"
}

// errorType classifies err, returned by op, without its message.
func errorType(op cache.Op, err error) string {
	var pe *cache.PanicError
	switch {
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, cache.ErrQueued):
		return "queued"
	case errors.Is(err, cache.ErrRedisUnavailable):
		return "redis_unavailable"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	}
	switch op {
	case cache.OpWriteThrough:
		return "write_error"
	case cache.OpSet, cache.OpInvalidate:
		return "redis_error"
	}
	return "load_error"
}
