package cache

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// row is the value type of most tests: versioned like a database row.
type row struct {
	Val string `json:"val"`
	Ver int64  `json:"ver"`
}

func (r row) CacheVersion() int64 { return r.Ver }

// table is an in-memory stand-in for a database table.
type table struct {
	mu   sync.Mutex // protects rows
	rows map[string]row

	loads atomic.Int64
	// hook, when set, runs inside every load after the row was read; it
	// lets a test hold a load at that point (the slow reader).
	hook func(ctx context.Context, key string, n int64) error
}

func newTable() *table { return &table{rows: map[string]row{}} }

func (tb *table) put(key, val string) row {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	r := row{Val: val, Ver: tb.rows[key].Ver + 1}
	tb.rows[key] = r
	return r
}

func (tb *table) load(ctx context.Context, key string) (row, error) {
	n := tb.loads.Add(1)
	tb.mu.Lock()
	r, ok := tb.rows[key]
	tb.mu.Unlock()
	if tb.hook != nil {
		if err := tb.hook(ctx, key, n); err != nil {
			return row{}, err
		}
	}
	if !ok {
		return row{}, ErrNotFound
	}
	return r, nil
}

// events is a Recorder that also signals each event on a channel, so tests
// can wait for background work without sleeping.
type events struct {
	mu      sync.Mutex // protects waiters
	waiters map[Event]chan struct{}
}

func (e *events) Count(_ string, ev Event) {
	e.mu.Lock()
	ch := e.waiters[ev]
	e.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (e *events) ObserveLoad(string, time.Duration, error) {}

// on returns a channel that receives (without blocking the Loader) when ev
// is counted.
func (e *events) on(ev Event) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.waiters == nil {
		e.waiters = map[Event]chan struct{}{}
	}
	ch := make(chan struct{}, 64)
	e.waiters[ev] = ch
	return ch
}

// newLoader returns a Loader of tb on rdb with a fresh prefix.
func newLoader(t *testing.T, rdb redis.UniversalClient, tb *table, opts *Options) *Loader[row] {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	o := *opts
	if o.Prefix == "" {
		o.Prefix = uniquePrefix(t, rdb)
	}
	l, err := New(rdb, "row", tb.load, &o)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func (tb *table) get(key string) (row, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	r, ok := tb.rows[key]
	return r, ok
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
