package cache

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
)

// ReconcileOptions configure Loader.Reconcile. A nil *ReconcileOptions
// means all defaults.
type ReconcileOptions struct {
	// Rate bounds how many entries are compared per second, so that a
	// reconciliation does not load the database like a cold cache would.
	// default: 500
	Rate int

	// ScanCount is the COUNT hint of each SCAN call.
	// default: 100
	ScanCount int

	// Progress, when set, is called after every SCAN batch with the totals
	// so far, and once more at the end. Calls never overlap and their
	// totals never go down; on a Redis Cluster, where every master is
	// scanned on a goroutine of its own, they come from those goroutines.
	// default: none
	Progress func(ReconcileResult)
}

// ReconcileResult counts what one reconciliation did.
type ReconcileResult struct {
	Scanned   int // keys seen under the Loader's prefix
	Compared  int // values and negative entries compared with the database
	Divergent int // entries that differed from the database: Older + Newer + those that cannot be ordered
	// Older are divergent entries behind the database: a lower version
	// than the row's, a negative entry for a row that exists, or a value
	// for a row that is gone — writes whose invalidation was missed.
	Older int
	// Newer are divergent entries ahead of the database: a higher version
	// than the row's. The database went back (a restored backup, a
	// rolled-back write that was Set anyway), or versions are not
	// monotonic: worth investigating, an invalidation would not have helped.
	// Divergent entries of the same version (a migration that rewrote
	// rows and kept their versions) or unversioned are neither.
	Newer   int
	Evicted int // divergent entries turned into tombstones
	Errors  int // entries that could not be read, loaded or evicted
}

// Reconcile walks the Loader's keys in Redis with SCAN (on Redis Cluster,
// on every master), compares every cached value and negative entry with
// what the LoadFunc returns now, and evicts the entries that differ with a
// compare-and-delete: an entry refilled, set or invalidated since it was
// read is left alone. Tombstones, leases and entries of other loaders are
// skipped. Divergence is counted as the stale_entry_found event.
//
// It finds what invalidations missed: rows changed behind the cache's back
// (a migration, a manual UPDATE), lost invalidations. Values are compared by
// their encoding, then, for codecs that do not encode deterministically,
// decoded with reflect.DeepEqual. It stops, returning what it did and
// ctx.Err(), when ctx ends.
func (l *Loader[T]) Reconcile(ctx context.Context, opts *ReconcileOptions) (ReconcileResult, error) {
	if l.bg.closed() {
		return ReconcileResult{}, ErrClosed
	}
	var o ReconcileOptions
	if opts != nil {
		o = *opts
	}
	if o.Rate < 0 || o.ScanCount < 0 {
		return ReconcileResult{}, errors.New("cache: ReconcileOptions.Rate and ScanCount must not be negative")
	}
	o.Rate = or(o.Rate, 500)
	o.ScanCount = or(o.ScanCount, 100)

	r := reconciler[T]{l: l, o: o, start: time.Now()}
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		iter := c.Scan(ctx, 0, globEscape(l.prefix)+"*", int64(o.ScanCount)).Iterator()
		for iter.Next(ctx) {
			if err := r.visit(ctx, iter.Val()); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	var err error
	switch c := l.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return scan(ctx, m) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, s *redis.Client) error { return scan(ctx, s) })
	default:
		err = scan(ctx, l.rdb)
	}
	r.progress()
	return r.result(), err
}

// reconciler is the state of one Reconcile; visits may run concurrently
// (one goroutine per Cluster master).
type reconciler[T any] struct {
	l     *Loader[T]
	o     ReconcileOptions
	start time.Time

	mu  sync.Mutex // protects res and n
	res ReconcileResult
	n   int // entries compared, for the rate

	// reporting serialises the calls of Options.Progress; each takes the
	// totals under it, so that they never go down from one call to the
	// next.
	reporting sync.Mutex
}

func (r *reconciler[T]) result() ReconcileResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.res
}

func (r *reconciler[T]) progress() {
	if r.o.Progress == nil {
		return
	}
	r.reporting.Lock()
	defer r.reporting.Unlock()
	r.o.Progress(r.result())
}

func (r *reconciler[T]) add(f func(*ReconcileResult)) {
	r.mu.Lock()
	f(&r.res)
	r.mu.Unlock()
}

// pace waits until comparing one more entry keeps under the rate.
func (r *reconciler[T]) pace(ctx context.Context) error {
	r.mu.Lock()
	due := r.start.Add(time.Duration(float64(r.n) / float64(r.o.Rate) * float64(time.Second)))
	r.n++
	r.mu.Unlock()
	if wait := time.Until(due); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// visit compares one key's entry with the database.
func (r *reconciler[T]) visit(ctx context.Context, rkey string) error {
	l := r.l
	r.add(func(res *ReconcileResult) { res.Scanned++ })
	if res := r.result(); res.Scanned%r.o.ScanCount == 0 {
		r.progress()
	}
	val, err := l.readEntry(ctx, l.rdb, rkey).Result()
	if err != nil && !isWrongType(err) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.add(func(res *ReconcileResult) { res.Errors++ })
		return nil
	}
	e, err := l.decodeRead(val, err)
	if err != nil || !e.Usable() {
		return nil // gone, a tombstone, a lease, or corrupt (Get replaces those)
	}
	if err := r.pace(ctx); err != nil {
		return err
	}
	key := rkey[len(l.prefix):]
	v, lerr := l.callLoad(ctx, key)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	notFound := isNotFound(lerr)
	if lerr != nil && !notFound {
		r.add(func(res *ReconcileResult) { res.Errors++ })
		return nil
	}
	r.add(func(res *ReconcileResult) { res.Compared++ })
	if l.agrees(&e, v, notFound) {
		return nil
	}
	order := l.order(&e, v, notFound)
	r.add(func(res *ReconcileResult) {
		res.Divergent++
		switch {
		case order < 0:
			res.Older++
		case order > 0:
			res.Newer++
		}
	})
	l.count(EventStaleEntryFound)
	n, err := script.Evict(rkey, e.Generation, e.Payload, e.Negative(), l.s.tombstoneTTL, script.NewToken()).Run(ctx, l.rdb).Int()
	l.dropLocal(key)
	switch {
	case err != nil:
		r.add(func(res *ReconcileResult) { res.Errors++ })
	case n == 1:
		r.add(func(res *ReconcileResult) { res.Evicted++ })
	}
	return nil
}

// agrees reports whether a cached entry agrees with what the database
// returned (v, or not found): by encoding, then, for codecs that do not
// encode deterministically, by reflect.DeepEqual of the decoded values.
func (l *Loader[T]) agrees(e *entry.Entry, v T, notFound bool) bool {
	if e.Negative() || notFound {
		return e.Negative() && notFound
	}
	payload, err := l.s.codec.Marshal(v)
	if err != nil {
		return true // cannot tell; Get would not cache it either
	}
	if bytes.Equal(payload, []byte(e.Payload)) {
		return true
	}
	cached, err := l.decode(e.Payload)
	if err != nil {
		return false
	}
	fresh, err := l.decode(string(payload))
	return err == nil && reflect.DeepEqual(cached, fresh)
}

// order compares a divergent entry with what the database returned (v, or
// not found): -1 when the entry is behind it, 1 when ahead of it, 0 when
// they cannot be ordered (same or no versions).
func (l *Loader[T]) order(e *entry.Entry, v T, notFound bool) int {
	switch {
	case e.Negative() != notFound:
		// A row created after its negative entry, or deleted after its
		// value was cached.
		return -1
	case notFound:
		return 0
	}
	ver, err := versionOf(v)
	switch {
	case err != nil:
		return 0
	case e.Version < ver:
		return -1
	case e.Version > ver:
		return 1
	}
	return 0
}

// isNotFound reports whether a LoadFunc's error says the row does not exist.
func isNotFound(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, sql.ErrNoRows)
}

// globEscape escapes the characters SCAN's MATCH pattern gives a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
