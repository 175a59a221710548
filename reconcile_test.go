package cache

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"testing"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/stretchr/testify/require"
)

// TestReconcileEvictsOnlyDivergentEntries seeds divergence behind the
// cache's back on the real MariaDB (updates, an insert over a negative
// entry, a delete) and requires Reconcile to evict exactly those entries.
func TestReconcileEvictsOnlyDivergentEntries(t *testing.T) {
	db := testenv.MySQL(t)
	rdb := testenv.Redis(t, "")
	tbl := testenv.Table(t, db, "recon")
	ctx := context.Background()
	_, err := db.ExecContext(ctx, "CREATE TABLE "+tbl+" (id INT PRIMARY KEY, val VARCHAR(64) NOT NULL, version BIGINT NOT NULL)")
	require.NoError(t, err)
	for id := range 30 {
		_, err := db.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (?, ?, 1)", id, "v"+strconv.Itoa(id))
		require.NoError(t, err)
	}
	load := func(ctx context.Context, key string) (row, error) {
		var r row
		err := db.QueryRowContext(ctx, "SELECT val, version FROM "+tbl+" WHERE id = ?", key).Scan(&r.Val, &r.Ver)
		return r, err // sql.ErrNoRows: not found
	}
	prefix := testenv.Prefix(t, rdb, "cachetest:")
	// RedisTimeout as newLoader sets it: a Get that fails open on a busy
	// machine caches nothing, and the pass would scan fewer entries.
	l, err := New(rdb, "recon", load, &Options{Prefix: prefix, RedisTimeout: testRedisTimeout})
	require.NoError(t, err)
	defer l.Close()
	other, err := New(rdb, "other", load, &Options{Prefix: prefix, RedisTimeout: testRedisTimeout})
	require.NoError(t, err)
	defer other.Close()

	for id := range 33 { // 30 rows and 3 missing ones
		_, err := l.Get(ctx, strconv.Itoa(id))
		if id >= 30 {
			require.ErrorIs(t, err, ErrNotFound)
		} else {
			require.NoError(t, err)
		}
		_, _ = other.Get(ctx, strconv.Itoa(id))
	}
	// Behind the cache's back: no invalidation.
	divergent := map[string]bool{}
	for _, id := range []int{3, 7, 11, 19, 23} {
		_, err := db.ExecContext(ctx, "UPDATE "+tbl+" SET val = 'migrated', version = version + 1 WHERE id = ?", id)
		require.NoError(t, err)
		divergent[strconv.Itoa(id)] = true
	}
	// A migration that rewrites values and keeps versions: same version,
	// other data, still divergent.
	_, err = db.ExecContext(ctx, "UPDATE "+tbl+" SET val = 'rewritten' WHERE id = 5")
	require.NoError(t, err)
	divergent["5"] = true
	_, err = db.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (31, 'new', 1)") // over a negative entry
	require.NoError(t, err)
	divergent["31"] = true
	_, err = db.ExecContext(ctx, "DELETE FROM "+tbl+" WHERE id = 29") // a cached row gone
	require.NoError(t, err)
	divergent["29"] = true
	// A restore: the database went back to an older version.
	_, err = db.ExecContext(ctx, "UPDATE "+tbl+" SET val = 'restored', version = 0 WHERE id = 13")
	require.NoError(t, err)
	divergent["13"] = true
	// Tombstones are skipped.
	require.NoError(t, l.Invalidate(ctx, "0", "1"))

	var progress []ReconcileResult
	res, err := l.Reconcile(ctx, &ReconcileOptions{Rate: 10000, ScanCount: 10,
		Progress: func(r ReconcileResult) { progress = append(progress, r) }})
	require.NoError(t, err)
	t.Logf("%+v after %d progress calls", res, len(progress))
	require.Equal(t, ReconcileResult{Scanned: 33, Compared: 31, Divergent: len(divergent),
		Older: 7, Newer: 1, Evicted: len(divergent)}, res, "older: 5 updates, the insert, the delete; newer: the restore; neither: the rewrite")
	require.NotEmpty(t, progress)
	require.Equal(t, res, progress[len(progress)-1])
	require.EqualValues(t, len(divergent), l.Stats().StaleEntriesFound)

	// Exactly the divergent entries were evicted; the others still hit.
	before := l.Stats()
	for id := range 33 {
		k := strconv.Itoa(id)
		h := fields(t, rdb, l.Key(k))
		evicted := h["f"] == "2"
		require.Equal(t, divergent[k] || k == "0" || k == "1", evicted, "key %s: %v", k, h)
		v, err := l.Get(ctx, k)
		want, werr := load(ctx, k)
		if errors.Is(werr, sql.ErrNoRows) {
			require.ErrorIs(t, err, ErrNotFound)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, want, v, "key %s after reconciling", k)
	}
	after := l.Stats()
	require.EqualValues(t, 33-len(divergent)-2, after.Hits+after.NegativeHits-before.Hits-before.NegativeHits)
	// Another loader under the same prefix was not touched.
	for id := range 3 {
		require.NotEqual(t, "2", fields(t, rdb, other.Key(strconv.Itoa(id)))["f"])
	}
}

// TestReconcileLeavesAFresherEntry: an entry refilled between Reconcile's
// read and its eviction is not deleted.
func TestReconcileLeavesAFresherEntry(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "old")
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	// Behind the cache's back, then a writer sets the new value while
	// Reconcile is loading the row.
	fresh := tb.put("a", "new")
	tb.hook = func(ctx context.Context, _ string, _ int64) error {
		return l.Set(ctx, "a", fresh)
	}
	res, err := l.Reconcile(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, 1, res.Divergent)
	require.Zero(t, res.Evicted, "the entry changed since it was read")
	tb.hook = nil
	v, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, fresh, v)
}

func TestReconcileStopsWithContext(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	for i := range 10 {
		tb.put(strconv.Itoa(i), "x")
		_, _ = l.Get(ctx, strconv.Itoa(i))
	}
	tb.hook = func(context.Context, string, int64) error { cancel(); return nil }
	res, err := l.Reconcile(ctx, &ReconcileOptions{Rate: 1})
	require.ErrorIs(t, err, context.Canceled)
	require.LessOrEqual(t, res.Compared, 1)
	_, err = l.Reconcile(context.Background(), &ReconcileOptions{Rate: -1})
	require.ErrorContains(t, err, "cache: ReconcileOptions")
}

func TestGlobEscape(t *testing.T) {
	require.Equal(t, `app\*\?\[x\]\\:`, globEscape(`app*?[x]\:`))
}

func TestReconcileOrdersDivergentEntries(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	for _, k := range []string{"behind", "ahead", "rewritten", "same"} {
		tb.put(k, "v1")
	}
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	for _, k := range []string{"behind", "ahead", "rewritten", "same", "created"} {
		_, _ = l.Get(ctx, k)
	}
	tb.put("behind", "v2")                                // version 2 behind the cache's back
	require.NoError(t, l.Set(ctx, "ahead", row{"v9", 9})) // the database stays at version 1
	tb.rows["rewritten"] = row{Val: "other", Ver: 1}      // same version, other data
	tb.put("created", "v1")                               // over a negative entry
	res, err := l.Reconcile(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, ReconcileResult{Scanned: 5, Compared: 5, Divergent: 4, Older: 2, Newer: 1, Evicted: 4}, res)
}
