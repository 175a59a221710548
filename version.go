package cache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/f4df6ac3/cache/internal/script"
)

// Versioned is implemented by values (T or *T) that carry the version of the
// database row they were read from: a version column, or an updated-at in
// microseconds. Fills and Sets never replace a stored value with a lower
// version. Versions must be 0 (unversioned) or positive and must never go
// backwards for a key, also across delete and re-insert.
type Versioned interface {
	CacheVersion() int64
}

// versionOf returns v's version: 0 unless T or *T implements Versioned.
func versionOf[T any](v T) (ver int64, err error) {
	defer func() {
		// A nil pointer whose CacheVersion dereferences it has no version.
		if recover() != nil {
			ver, err = 0, nil
		}
	}()
	if vv, ok := any(v).(Versioned); ok {
		ver = vv.CacheVersion()
	} else if vv, ok := any(&v).(Versioned); ok {
		ver = vv.CacheVersion()
	}
	if ver < 0 {
		return 0, fmt.Errorf("%w: %d", ErrNegativeVersion, ver)
	}
	return ver, nil
}

// acquireReply is the decoded reply of the acquire script.
type acquireReply struct {
	status    int64
	gen       int64
	payload   string
	flags     int64
	remaining time.Duration // of the lease
	delta     time.Duration // of the last load
	owner     string        // lease holder, when held
	soft      int64         // soft expiry, server ms
	now       int64         // server clock, ms
}

// acquire asks for the lease on rkey; soft is the soft expiry the caller
// read, checked in refresh mode.
func (l *Loader[T]) acquire(ctx context.Context, b *redisBudget, rkey, token, mode string, soft int64) (acquireReply, error) {
	var vals []any
	err := l.redisCallKey(ctx, b, rkey, func(ctx context.Context) (err error) {
		vals, err = script.Acquire.Run(ctx, l.rdb, []string{rkey}, token, ms(l.s.leaseTimeout), mode, soft).Slice()
		return err
	})
	if err != nil {
		return acquireReply{}, err
	}
	a, err := parseAcquire(vals)
	if err == nil {
		l.clock.observe(a.now)
	}
	return a, err
}

func parseAcquire(vals []any) (acquireReply, error) {
	if len(vals) != 9 {
		return acquireReply{}, fmt.Errorf("cache: acquire replied %d values", len(vals))
	}
	var a acquireReply
	var rem, delta int64
	ints := [...]*int64{0: &a.status, 1: &a.gen, 3: &a.flags, 4: &rem, 5: &delta, 7: &a.soft, 8: &a.now}
	for i, p := range ints {
		if p == nil {
			continue
		}
		n, ok := vals[i].(int64)
		if !ok {
			return acquireReply{}, fmt.Errorf("cache: acquire reply %d is %T", i, vals[i])
		}
		*p = n
	}
	a.payload, _ = vals[2].(string)
	a.owner, _ = vals[6].(string)
	a.remaining = time.Duration(rem) * time.Millisecond
	a.delta = time.Duration(delta) * time.Millisecond
	return a, nil
}

// fill stores a loaded value (or a negative entry) if the lease is still
// ours and no newer version is stored; a rejection is a stale set
// prevented, unless tentative (the lease may never have been ours).
// keyTTL is the key's life, softTTL the value's (0: none). It reports
// whether Redis answered.
func (l *Loader[T]) fill(ctx context.Context, b *redisBudget, rkey, token string, payload []byte, version int64, negative bool, keyTTL, softTTL, delta time.Duration, tentative bool) bool {
	neg := "0"
	if negative {
		neg = "1"
	}
	var n int
	err := l.redisCallKey(ctx, b, rkey, func(ctx context.Context) (err error) {
		n, err = script.Fill.Run(ctx, l.rdb, []string{rkey}, token, payload,
			strconv.FormatInt(version, 10), neg, ms(keyTTL), ms(delta), softMS(softTTL), l.wakeChannel()).Int()
		return err
	})
	if err == nil && n != script.Stored && !tentative {
		l.count(EventStaleSetPrevented)
	}
	return err == nil
}

// softMS is ms for a soft TTL, where 0 means none.
func softMS(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return ms(d)
}

// release gives up the lease without filling; it reports whether Redis
// answered.
func (l *Loader[T]) release(ctx context.Context, b *redisBudget, rkey, token string) bool {
	return l.redisCallKey(ctx, b, rkey, func(ctx context.Context) error {
		return script.Release.Run(ctx, l.rdb, []string{rkey}, token, l.wakeChannel()).Err()
	}) == nil
}
