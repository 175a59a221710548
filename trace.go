package cache

import "context"

// Tracer follows a Loader's operations in the contexts they run in, for
// distributed tracing; package otelcache implements it with OpenTelemetry.
// Where a Recorder counts what happened, a Tracer learns which request it
// happened to: Start is called as each Get, GetMany, Set, Invalidate,
// WriteThrough, load, background refresh and sampled check begins, and the
// events counted on its behalf go to the Span it returned.
//
// A Loader without a Tracer (Options.Tracer nil, the default) pays a nil
// check per operation and allocates nothing for it.
type Tracer interface {
	// Start is called as op begins, with the context it was called with.
	// It returns the context the operation goes on in, derived from ctx —
	// the loads, user functions and Redis calls it makes get it, so that
	// their spans nest — and the Span that follows it (nil: not followed).
	//
	// For OpRefresh and OpSample, ctx is that of the Get that started the
	// work, without its cancellation; that Get has returned or soon will,
	// so the work is better linked to it than made its child.
	Start(ctx context.Context, op Operation) (context.Context, Span)
}

// Span follows one operation started by a Tracer. Its methods must be safe
// for concurrent use (the keys of a GetMany are answered concurrently), and
// Event may be called after End: a load shared by several Gets goes on
// after the Get that started it has left.
type Span interface {
	// Event records e, counted on the operation's behalf: the result of a
	// Get (EventHit, EventMiss, EventNegativeHit, EventStale, EventBypass,
	// EventLocalHit, once per key of a GetMany), and what happened along the way
	// (EventCoalesced, EventLeaseWait, EventRefresh, EventMigrated,
	// EventStaleSetPrevented, EventInvalidationQueued; a sampled check's
	// EventSampled and EventInconsistent).
	Event(e Event)
	// End ends the operation with the error it returned: nil, one
	// matching ErrNotFound (not a failure) or ErrQueued, or another.
	End(err error)
}

// Op names an operation a Tracer follows.
type Op int

// Operations.
const (
	OpGet          Op = iota // Get
	OpGetMany                // GetMany
	OpSet                    // Set
	OpInvalidate             // Invalidate and InvalidateVersions
	OpWriteThrough           // WriteThrough (its write function runs inside it)
	OpLoad                   // one call of the LoadFunc or the BatchLoadFunc
	OpRefresh                // a background refresh (early refresh, stale-while-revalidate)
	OpSample                 // a sampled consistency check (Options.SampleRate)
	numOps
)

var opNames = [numOps]string{"Get", "GetMany", "Set", "Invalidate", "WriteThrough", "load", "refresh", "sample"}

// String returns the operation's name, such as "Get" or "load".
func (o Op) String() string {
	if o < 0 || o >= numOps {
		return "unknown"
	}
	return opNames[o]
}

// Operation describes an operation to Tracer.Start.
type Operation struct {
	Op     Op
	Loader string // the Loader's name
	// Key is the key operated on, when there is one; "" for operations on
	// several keys. It is the caller's key, not the Redis key.
	// WARNING: keys may identify people (user ids, e-mail addresses); a
	// Tracer should not export them as they are.
	Key string
	// Keys is how many keys the operation is about (1 for a Get).
	Keys int
}

// spanKey is the context key of the Span of the operation a context
// belongs to, set only when a Tracer is configured.
type spanKey struct{}

// startOp starts op on key (of n keys) when a Tracer is configured, and
// returns ctx unchanged and a nil Span otherwise.
func (l *Loader[T]) startOp(ctx context.Context, op Op, key string, n int) (context.Context, Span) {
	if l.s.tracer == nil {
		return ctx, nil
	}
	ctx, sp := l.s.tracer.Start(ctx, Operation{Op: op, Loader: l.name, Key: key, Keys: n})
	if sp == nil {
		return ctx, nil
	}
	return context.WithValue(ctx, spanKey{}, sp), sp
}

// endOp ends sp, if it was started.
func endOp(sp Span, err error) {
	if sp != nil {
		sp.End(err)
	}
}

// countIn counts e, and records it on the Span of ctx's operation.
func (l *Loader[T]) countIn(ctx context.Context, e Event) {
	l.count(e)
	l.note(ctx, e)
}

// note records e, counted elsewhere, on the Span of ctx's operation.
func (l *Loader[T]) note(ctx context.Context, e Event) {
	if l.s.tracer == nil {
		return
	}
	if sp, ok := ctx.Value(spanKey{}).(Span); ok {
		sp.Event(e)
	}
}

// traceOrigin returns what a background operation started by ctx's
// operation passes to Tracer.Start: ctx without its cancellation when a
// Tracer is configured, nil otherwise (nothing is kept). A sampled check
// started from it runs with ctx's values, as a refresh does.
func (l *Loader[T]) traceOrigin(ctx context.Context) context.Context {
	if l.s.tracer == nil {
		return nil
	}
	return context.WithoutCancel(ctx)
}

// oneKey returns the key of a one-key operation, "" for several keys.
func oneKey(keys []string) string {
	if len(keys) == 1 {
		return keys[0]
	}
	return ""
}
