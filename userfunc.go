package cache

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Every call of user code — the LoadFunc, the BatchLoadFunc, WriteThrough's
// write function — goes through guard, whoever calls it: a Get, a batch of
// GetMany, a background refresh, a sampled consistency check, Reconcile.
// Background goroutines are user code's most dangerous callers: a panic
// there would crash the process.

// guard runs fn, user code, bounded by LoadTimeout when timed: a panic
// becomes a *PanicError, "no rows" becomes ErrNotFound, other errors are
// wrapped as what failed (what is called only then); loads are recorded.
func (l *Loader[T]) guard(ctx context.Context, timed, isLoad bool, what func() string, fn func(ctx context.Context) error) (err error) {
	if timed {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.s.loadTimeout)
		defer cancel()
	}
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = newPanicError(p)
			l.s.logger.Error("cache: user function panicked", "loader", l.name, "call", what(), "err", err,
				"stack", string(err.(*PanicError).Stack))
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			err = ErrNotFound
		case isNotFound(err):
			err = fmt.Errorf("%w: %w", ErrNotFound, err) // matches both, e.g. sql.ErrNoRows
		case isLoad:
			l.stats.loadErrors.Add(1)
			err = fmt.Errorf("cache: %s: %w", what(), err)
		default:
			err = fmt.Errorf("cache: %s: %w", what(), err)
		}
		if isLoad {
			l.stats.loads.Add(1)
			l.s.recorder.ObserveLoad(l.name, time.Since(start), err)
		}
	}()
	return fn(ctx)
}

// callLoad runs the LoadFunc for key through guard. A key that does not
// exist returns ErrNotFound itself: callers name the key.
func (l *Loader[T]) callLoad(ctx context.Context, key string) (v T, err error) {
	ctx, sp := l.startOp(ctx, OpLoad, key, 1)
	defer func() { endOp(sp, err) }()
	err = l.guard(ctx, true, true, func() string { return fmt.Sprintf("load %s %q", l.name, key) },
		func(ctx context.Context) (err error) {
			v, err = l.load(ctx, key)
			return err
		})
	if err == nil {
		err = l.checkVersion(key, v)
	}
	return v, err
}

// checkVersion returns an error wrapping ErrNegativeVersion (counted and
// logged) when v, just loaded for key, has a negative version: the same
// rule as Set's, as loud. The value is not cached.
func (l *Loader[T]) checkVersion(key string, v T) error {
	if _, err := versionOf(v); err != nil {
		l.count(EventEncodeError)
		l.s.logger.Error("cache: loaded value has a negative version; not cached", "loader", l.name, "key", key, "err", err)
		return fmt.Errorf("cache: load %s %q: %w", l.name, key, err)
	}
	return nil
}

// callBatchLoad runs the BatchLoadFunc for keys through guard, recorded as
// one load.
func (l *Loader[T]) callBatchLoad(ctx context.Context, keys []string) (m map[string]T, err error) {
	ctx, sp := l.startOp(ctx, OpLoad, "", len(keys))
	defer func() { endOp(sp, err) }()
	err = l.guard(ctx, true, true, func() string { return fmt.Sprintf("batch load %s of %d keys", l.name, len(keys)) },
		func(ctx context.Context) (err error) {
			m, err = l.batch(ctx, keys)
			return err
		})
	if err != nil {
		m = nil
	}
	return m, err
}

// callWrite runs WriteThrough's write function through guard: not bounded
// by LoadTimeout (a write may legitimately take longer), not a load.
func (l *Loader[T]) callWrite(ctx context.Context, key string, write func(ctx context.Context) (T, error)) (v T, err error) {
	err = l.guard(ctx, false, false, func() string { return fmt.Sprintf("write-through %s %q", l.name, key) },
		func(ctx context.Context) (err error) {
			v, err = write(ctx)
			return err
		})
	return v, err
}
