package main

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// These tests need a real Redis and MySQL/MariaDB: CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When one cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

func TestRun(t *testing.T) {
	db, rdb, prefix := servers(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out strings.Builder
	start := time.Now()
	res, err := run(ctx, &out, db, rdb, config{Prefix: prefix})
	elapsed := time.Since(start)
	t.Log("\n" + out.String())
	require.NoError(t, err)
	require.Less(t, elapsed, 10*time.Second)

	// The readers never failed, and did read.
	require.Zero(t, res.ReadErrors)
	for _, r := range []string{"billing", "alerting", "dashboard"} {
		require.Positive(t, res.Reads[r], r)
	}

	// After the webhooks, every Get equals the database.
	require.Equal(t, res.SIMs, res.Checked)
	require.Zero(t, res.Mismatches)

	// The migration window: the first pass finds the entries the copier
	// left stale and evicts them; a later pass finds none.
	require.GreaterOrEqual(t, len(res.Rounds), 2)
	first, last := res.Rounds[0], res.Rounds[len(res.Rounds)-1]
	require.Positive(t, first.Lagging)
	require.Positive(t, first.Reconcile.Divergent)
	require.Equal(t, first.Reconcile.Divergent, first.Reconcile.Evicted)
	require.EqualValues(t, first.Reconcile.Divergent, first.StaleFound, "the counter matches the pass")
	require.LessOrEqual(t, first.Reconcile.Divergent, first.Lagging, "only SIMs the copier lagged on can be stale")
	require.Zero(t, first.Reconcile.Errors)
	require.Zero(t, last.Reconcile.Divergent)
	require.Zero(t, last.StaleFound)
	var found uint64
	for _, r := range res.Rounds {
		require.Equal(t, res.SIMs, r.Reconcile.Scanned)
		found += r.StaleFound
	}
	require.Equal(t, found, res.Stats.StaleEntriesFound)

	// After the window the cache agrees with the new table, which agrees
	// with the old one.
	require.Equal(t, res.SIMs, res.FinalChecked)
	require.Zero(t, res.FinalMisses)
	require.Zero(t, res.TablesDiffer)

	// run dropped its tables and deleted its keys.
	require.Len(t, res.Tables, 2)
	for _, table := range res.Tables {
		var n int
		require.NoError(t, db.QueryRowContext(t.Context(),
			"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", table).Scan(&n))
		require.Zero(t, n, table)
	}
	n, err := rdb.Exists(t.Context(), prefix+"sim:tenant1:8944000000000000000:status").Result()
	require.NoError(t, err)
	require.Zero(t, n)
	keys, _, err := rdb.Scan(t.Context(), 0, globEscape(prefix)+"*", 1000).Result()
	require.NoError(t, err)
	require.Empty(t, keys)
}

func TestRunRefusesEmptyPrefix(t *testing.T) {
	_, err := run(t.Context(), &strings.Builder{}, nil, nil, config{})
	require.ErrorContains(t, err, "prefix")
}

func TestParseKey(t *testing.T) {
	tenant, iccid, err := parseKey(simKey("acme", "8944000000000000001"))
	require.NoError(t, err)
	require.Equal(t, "acme", tenant)
	require.Equal(t, "8944000000000000001", iccid)
	for _, bad := range []string{"", "acme", "acme:1", "acme:1:state", ":1:status", "acme::status", "a:b:c:status"} {
		_, _, err := parseKey(bad)
		require.Error(t, err, bad)
	}
}

func TestGlobEscape(t *testing.T) {
	require.Equal(t, `a\*b\?c\[d\]e\\f:`, globEscape(`a*b?c[d]e\f:`))
}

// servers returns connections to the real servers and a fresh Redis key
// prefix (its keys deleted at the end; run drops its own tables).
func servers(t *testing.T) (*sql.DB, *redis.Client, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	rdb := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(ctx).Err(); err != nil {
		unreachable(t, "redis", err)
	}
	db, err := sql.Open("mysql", testenv.MySQLDSN())
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	if err := db.PingContext(ctx); err != nil {
		unreachable(t, "mysql", err)
	}

	prefix := "cache-simstatus-test:" + randomHex() + ":"
	t.Cleanup(func() {
		if err := deletePrefix(context.Background(), rdb, prefix); err != nil {
			t.Errorf("delete keys %s*: %v", prefix, err)
		}
	})
	return db, rdb, prefix
}

func unreachable(t *testing.T, what string, err error) {
	t.Helper()
	testenv.Unreachable(t, what, err)
}
