package writebehind

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrBacklogFull is returned by Add when the key's shard holds
// Options.MaxPendingEntries unflushed entries: the call was not counted.
var ErrBacklogFull = errors.New("writebehind: backlog full, delta not counted")

// ErrNotReplicated is wrapped by the error of an Add that was counted on
// the primary but reached fewer than Options.Replicas replicas within
// Options.ReplicaTimeout. Do not retry such an Add with a new token: it
// was counted.
var ErrNotReplicated = errors.New("writebehind: counted, but not on enough replicas")

// ErrNoRead is returned by Get when the Counter has no Options.Read.
var ErrNoRead = errors.New("writebehind: Get needs Options.Read")

// ErrEmptyKey is returned by every method given an empty key.
var ErrEmptyKey = errors.New("writebehind: empty key")

// ErrEmptyToken is returned by AddOnce given an empty token.
var ErrEmptyToken = errors.New("writebehind: empty token")

// PanicError is the error a flush pass returns when the ApplyFunc (or
// OnFlushed) panicked; the batch was rolled back and is retried.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the panicking goroutine
}

// Error returns the panic value and the stack.
func (p *PanicError) Error() string {
	return fmt.Sprintf("writebehind: apply panicked: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

func newPanicError(v any) error {
	return &PanicError{Value: v, Stack: debug.Stack()}
}
