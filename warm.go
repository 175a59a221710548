package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// WarmOptions configure Loader.Warm. A nil *WarmOptions means defaults.
type WarmOptions struct {
	// Concurrency is how many keys are loaded at once.
	// default: 8
	Concurrency int

	// Progress, when set, is called after each key with the totals so far.
	// Calls may come from several goroutines, one at a time.
	// default: none
	Progress func(WarmResult)
}

// WarmResult counts what one Warm did.
type WarmResult struct {
	Done     int // keys handled
	Hits     int // keys already cached
	Loaded   int // keys loaded (here, or by another process holding the lease)
	NotFound int // keys whose row does not exist (cached as negative entries)
	Errors   int // keys whose load failed
}

// Warm fills the cache for keys, Concurrency at a time, through the normal
// read path: cached keys are left alone, and a key another process is
// loading is waited for, not loaded twice (its lease is respected). Use it
// before sending traffic to a new key format or a cold Redis. It stops,
// returning what it did and ctx.Err(), when ctx ends; a failed key is
// counted, not fatal.
func (l *Loader[T]) Warm(ctx context.Context, keys []string, opts *WarmOptions) (WarmResult, error) {
	var o WarmOptions
	if opts != nil {
		o = *opts
	}
	if o.Concurrency < 0 {
		return WarmResult{}, errors.New("cache: WarmOptions.Concurrency must not be negative")
	}
	o.Concurrency = or(o.Concurrency, 8)

	var (
		mu   sync.Mutex // protects res and serializes Progress
		res  WarmResult
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(o.Concurrency, len(keys)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return
				}
				var hit bool
				err := l.check(keys[i])
				if err == nil {
					_, hit, err = l.get(ctx, keys[i])
				}
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				res.Done++
				switch {
				case hit && err == nil:
					res.Hits++
				case err == nil:
					res.Loaded++
				case errors.Is(err, ErrNotFound):
					res.NotFound++
				default:
					res.Errors++
				}
				if o.Progress != nil {
					o.Progress(res)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res, ctx.Err()
}
