package cache

import (
	"context"
	"errors"
	"time"

	"github.com/f4df6ac3/cache/internal/script"
)

// The lease protocol: a miss asks Redis for the key's fill lease
// (acquire); the holder loads and stores the outcome under the lease
// token (a fill, or the release of the lease when there is nothing to
// store); others wait for that fill (awaitLease, in aside.go). The store
// decision is made in one place, storeCall, for Get and for GetMany's
// batches alike.

// acquire asks for the lease on rkey; soft is the soft expiry the caller
// read, checked in refresh mode. When Redis does not answer, the request
// may still run (it can sit in a socket while the call gives up), so it
// carries the server time after which it must grant nothing (see
// acquireDeadline); settled is when that time has passed, after which a
// store under token either finds the lease or none will be granted. A
// request that ran too late says so: errLateAcquire.
func (l *Loader[T]) acquire(ctx context.Context, b *redisBudget, rkey, token string, mode script.Mode, soft int64) (_ script.AcquireReply, settled time.Time, _ error) {
	notAfter, settled := l.acquireDeadline(b.left)
	var a script.AcquireReply
	err := l.redisCallKey(ctx, b, rkey, func(ctx context.Context) (err error) {
		a, err = script.ParseAcquire(script.Acquire(rkey, token, l.s.leaseTimeout, mode, soft, notAfter).Run(ctx, l.rdb))
		return err
	})
	if err == nil {
		l.clock.observe(a.Now)
		if a.Status == script.Late {
			err = errLateAcquire
		}
	}
	return a, settled, err
}

// errLateAcquire: the lease request ran after its caller stopped waiting
// for it, and granted nothing.
var errLateAcquire = errors.New("cache: lease request ran after its deadline")

// acquireDeadline returns, for a lease request sent now with left to wait
// for its reply, the server time (ms) after which it must grant nothing,
// and the local time by which that server time has surely passed. The
// server clock is estimated from earlier replies (l.clock), which can only
// underestimate it (a reply's time was read before the reply arrived), so
// the deadline errs early and the local time late.
func (l *Loader[T]) acquireDeadline(left time.Duration) (notAfter int64, settled time.Time) {
	now := time.Now()
	return l.clock.serverNow() + left.Milliseconds() + 1, now.Add(left + 2*time.Millisecond)
}

// storeSettled sends st, the store of a lease request that got no answer:
// at once, which lands when the request ran and its reply was lost; and,
// when it found no lease, again once the request can no longer be granted
// (settled; see acquire), which lands if the request ran late. Either way
// no lease is left behind by the request.
func (l *Loader[T]) storeSettled(ctx context.Context, st store, settled time.Time) {
	if ok, n := l.runStore(ctx, &redisBudget{left: l.s.redisTimeout}, st); ok && n != script.LeaseLost {
		return // the lease was ours: filled, refused as older, or released
	}
	l.waitSettled(settled)
	l.storeAfter(ctx, st)
}

// waitSettled waits until settled, or until the Loader closes.
func (l *Loader[T]) waitSettled(settled time.Time) {
	if d := time.Until(settled); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.bg.done:
		}
		t.Stop()
	}
}

// store is the step that stores the outcome of one load under a lease.
type store struct {
	call script.Call
	fill bool // a fill (else a release)
	// tentative: the lease may never have been granted, so a refusal is
	// not counted as a stale set prevented.
	tentative bool
}

// storeCall decides how to store the outcome of a load of rkey (value v or
// error err, which took delta) under token: a fill of the value or of a
// negative entry, or, for a failed load or a value that cannot be cached,
// the release of the lease so that waiters stop waiting (a failed load is
// never cached).
func (l *Loader[T]) storeCall(rkey, token string, v T, err error, delta time.Duration, tentative bool) store {
	release := store{call: script.Release(rkey, token, l.wakeChannel()), tentative: tentative}
	f := script.Fill{Token: token, Delta: delta, Channel: l.wakeChannel()}
	switch {
	case errors.Is(err, ErrNotFound) && !l.s.noNegative:
		f.Negative, f.KeyTTL = true, l.s.negativeEntryTTL()
	case err != nil:
		return release
	default:
		payload, version, err := l.encode(v)
		if err != nil {
			return release
		}
		ttl := l.s.valueTTL()
		f.Payload, f.Version, f.KeyTTL, f.SoftTTL = payload, version, ttl+l.s.maxStale, ttl
	}
	return store{call: script.FillCall(rkey, f), fill: true, tentative: tentative}
}

// runStore sends one store within b and reports whether Redis answered
// it, and with what (script.Stored, LeaseLost, OlderValue).
func (l *Loader[T]) runStore(ctx context.Context, b *redisBudget, st store) (answered bool, n int64) {
	err := l.redisCallKey(ctx, b, st.call.Key, func(ctx context.Context) (err error) {
		n, err = st.call.Run(ctx, l.rdb).Int64()
		return err
	})
	if err != nil {
		return false, 0
	}
	l.countStored(st, n)
	return true, n
}

// countStored counts a fill refused because the lease was lost or a newer
// version is stored: a stale set prevented.
func (l *Loader[T]) countStored(st store, n int64) {
	if st.fill && !st.tentative && n != script.Stored {
		l.count(EventStaleSetPrevented)
	}
}

// storeMany sends stores in one pipelined round (one per Redis Cluster
// master) and reports, for each, whether Redis answered it.
func (l *Loader[T]) storeMany(ctx context.Context, b *redisBudget, stores []store) []bool {
	calls := make([]script.Call, len(stores))
	for i, st := range stores {
		calls[i] = st.call
	}
	cmds, _ := l.runScripts(ctx, b, calls)
	ok := make([]bool, len(stores))
	for i, c := range cmds {
		if c == nil || c.Err() != nil {
			continue
		}
		ok[i] = true
		n, _ := c.Int64()
		l.countStored(stores[i], n)
	}
	return ok
}
