package cache

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
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

// testRedisTimeout is the RedisTimeout of newLoader's Loaders unless the
// test sets one.
const testRedisTimeout = 2 * time.Second

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
	if o.RedisTimeout == 0 {
		// Tests that count events must not depend on the machine's
		// load: under -race on a busy machine a 50ms budget runs out, and
		// a Get then fails open (counted, and loaded), as it should. Tests
		// of the budget itself set RedisTimeout.
		o.RedisTimeout = testRedisTimeout
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

// fields returns the entry at rkey as the fields of the hash it would have
// been before entry format 2 (p, f, g, v, s, d, lo, ld), each present when
// that format would have had it: tests read entries through it.
func fields(t testing.TB, rdb redis.Cmdable, rkey string) map[string]string {
	t.Helper()
	s, err := rdb.Get(context.Background(), rkey).Result()
	if errors.Is(err, redis.Nil) {
		return map[string]string{}
	}
	require.NoError(t, err)
	return fieldsOf(t, s)
}

// fieldsOf is fields of an entry's value.
func fieldsOf(t testing.TB, s string) map[string]string {
	t.Helper()
	f, err := entryFields(s)
	require.NoError(t, err, "entry %q", s)
	return f
}

// entryFields is fieldsOf, with an error for a corrupt entry.
func entryFields(s string) (map[string]string, error) {
	e, err := entry.Decode(s, len(s))
	if err != nil {
		return nil, err
	}
	f := map[string]string{
		"g": strconv.FormatInt(e.Generation, 10),
		"v": strconv.FormatInt(e.Version, 10),
		"d": strconv.FormatInt(e.Delta, 10),
	}
	if e.HasPayload {
		f["p"] = e.Payload
	}
	if fl := e.Flags & (entry.FlagNegative | entry.FlagInvalidated); fl != 0 {
		f["f"] = strconv.FormatInt(fl, 10)
	}
	if e.SoftExpiry > 0 {
		f["s"] = strconv.FormatInt(e.SoftExpiry, 10)
	}
	if e.LeaseOwner != "" {
		f["lo"], f["ld"] = e.LeaseOwner, strconv.FormatInt(e.LeaseDeadline, 10)
	}
	return f, nil
}

// putEntry writes an entry by hand: a header (entry.Header) and a payload.
func putEntry(t testing.TB, rdb redis.Cmdable, rkey, header, payload string) {
	t.Helper()
	require.NoError(t, rdb.Set(context.Background(), rkey, header+payload, time.Minute).Err())
}

// hasField reports whether fields(t, rdb, rkey) has f.
func hasField(t testing.TB, rdb redis.Cmdable, rkey, f string) bool {
	t.Helper()
	_, ok := fields(t, rdb, rkey)[f]
	return ok
}

// editEntry rewrites the header of the entry at rkey with edit applied to
// it (SETRANGE: its payload and TTL stay).
func editEntry(t testing.TB, rdb redis.Cmdable, rkey string, edit func(e *entry.Entry)) {
	t.Helper()
	ctx := context.Background()
	s, err := rdb.Get(ctx, rkey).Result()
	require.NoError(t, err)
	e, err := entry.Decode(s, len(s))
	require.NoError(t, err)
	edit(&e)
	h := entry.Header(e.Flags, e.Generation, e.Version, e.SoftExpiry, e.Delta, e.LeaseDeadline, e.LeaseOwner)
	require.NoError(t, rdb.SetRange(ctx, rkey, 0, h).Err())
}

// onBothRedis runs f as a subtest against miniredis and against the real
// Redis.
func onBothRedis(t *testing.T, f func(t *testing.T, rdb redis.UniversalClient)) {
	t.Run("miniredis", func(t *testing.T) { _, r := fakeRedis(t); f(t, r) })
	t.Run("redis", func(t *testing.T) { f(t, realRedis(t)) })
}
