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
}

func (l *Loader[T]) acquire(ctx context.Context, rkey, token string, force bool) (acquireReply, error) {
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	f := "0"
	if force {
		f = "1"
	}
	vals, err := script.Acquire.Run(ctx, l.rdb, []string{rkey}, token, ms(l.s.leaseTimeout), f).Slice()
	if err != nil {
		return acquireReply{}, err
	}
	return parseAcquire(vals)
}

func parseAcquire(vals []any) (acquireReply, error) {
	if len(vals) != 7 {
		return acquireReply{}, fmt.Errorf("cache: acquire replied %d values", len(vals))
	}
	var a acquireReply
	ints := [...]*int64{&a.status, &a.gen, nil, &a.flags, nil, nil}
	var rem, delta int64
	ints[4], ints[5] = &rem, &delta
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
// ours and no newer version is stored; a rejection is a stale set prevented.
func (l *Loader[T]) fill(ctx context.Context, rkey, token string, payload []byte, version int64, negative bool, ttl, delta time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	neg := "0"
	if negative {
		neg = "1"
	}
	n, err := script.Fill.Run(ctx, l.rdb, []string{rkey}, token, payload,
		strconv.FormatInt(version, 10), neg, ms(ttl), ms(delta), 0).Int()
	switch {
	case err != nil:
		l.count(EventRedisError)
	case n != script.Stored:
		l.count(EventStaleSetPrevented)
	}
}

func (l *Loader[T]) release(ctx context.Context, rkey, token string) {
	ctx, cancel := context.WithTimeout(ctx, l.s.redisTimeout)
	defer cancel()
	if err := script.Release.Run(ctx, l.rdb, []string{rkey}, token).Err(); err != nil {
		l.count(EventRedisError)
	}
}
