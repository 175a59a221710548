package cache

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrNotFound reports that the row behind a key does not exist. A LoadFunc
// returns it (or an error wrapping sql.ErrNoRows) to say so; Get and
// WriteThrough return an error matching it with errors.Is (naming the
// loader and the key), both for a fresh load and for a cached negative
// entry.
var ErrNotFound = errors.New("cache: not found")

// notFound is err, which matches ErrNotFound, for key of loader as callers
// receive it: naming both, and still matching what err matched (such as
// sql.ErrNoRows).
func notFound(loader, key string, err error) error {
	return fmt.Errorf("cache: %s %q: %w", loader, key, err)
}

// ErrRedisUnavailable is wrapped by the errors of Set and Invalidate while
// the circuit breaker is open: Redis was not called.
// (Internally it also marks a Get whose Redis budget is spent.)
var ErrRedisUnavailable = errors.New("cache: redis unavailable (circuit breaker open)")

// ErrEmptyKey is returned by every method given an empty key.
var ErrEmptyKey = errors.New("cache: empty key")

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("cache: loader closed")

// ErrNegativeVersion is returned when a value's CacheVersion is negative;
// versions must be 0 (unversioned) or positive.
var ErrNegativeVersion = errors.New("cache: negative version")

// PanicError is the error every caller of a load receives when the LoadFunc
// (or BatchLoadFunc, or WriteThrough's write function) panicked. The key
// stays usable: the next Get loads again.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the panicking goroutine (not in Error)
}

// Error returns the panic value on one line; the stack is in Stack.
func (p *PanicError) Error() string {
	return fmt.Sprintf("cache: panic: %v", p.Value)
}

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

func newPanicError(v any) error {
	return &PanicError{Value: v, Stack: debug.Stack()}
}

// ErrTooLarge is wrapped by the error a value larger than
// Options.MaxValueBytes produces; such values are not cached.
var ErrTooLarge = errors.New("cache: value too large")

// ErrQueued is wrapped by the error of an Invalidate (or
// InvalidateVersions) that Redis did not answer within InvalidateTimeout:
// the invalidation is queued in this process and applied as soon as Redis
// answers again; until then this process's Gets of the key bypass Redis.
// Other processes may serve the old entry until it lands (or its TTL
// passes, if this process dies first).
var ErrQueued = errors.New("cache: invalidation queued")
