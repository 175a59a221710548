package main

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"os"
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
	res := runExample(t, db, rdb, config{Prefix: prefix})
	checkRun(t, db, rdb, prefix, res)

	// The migration window: the first pass finds the entries the copier
	// left stale and evicts them.
	first := res.Rounds[0]
	require.Positive(t, first.Reconcile.Divergent)
	require.Equal(t, first.Reconcile.Divergent, first.Reconcile.Evicted)

	// Without a relay, the writes around the cache after the window left
	// stale entries that only the pass after the window found.
	require.False(t, res.Relay)
	require.Positive(t, res.Around)
	require.Positive(t, res.After.Divergent)
	require.LessOrEqual(t, res.After.Divergent, res.Around, "only the SIMs changed around the cache can be stale")
	require.Equal(t, res.After.Divergent, res.After.Evicted)
}

// With a relay tailing the binlog, the pass after the window finds nothing:
// every write around the cache invalidated its key, with the row's version
// as floor, before the pass ran.
func TestRunWithRelay(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.MariaDBConfig{})
	db := m.DB(t)
	_, rdb, prefix := servers(t)
	cfg := config{Prefix: prefix, RelayDSN: m.DSN("test")}
	cfg.RelayLogger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		cfg.RelayLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	res := runExample(t, db, rdb, cfg)
	checkRun(t, db, rdb, prefix, res)

	require.True(t, res.Relay)
	require.Positive(t, res.Around)
	require.Zero(t, res.After.Divergent, "the relay invalidated every key changed around the cache")
	require.Zero(t, res.After.Evicted)
	require.Zero(t, res.After.Errors)
	require.Equal(t, res.SIMs, res.After.Scanned)
	// The relay invalidated at least every write around the cache.
	require.GreaterOrEqual(t, res.RelayStats.Invalidations, uint64(res.Around))
	require.Zero(t, res.RelayStats.Statements)

	// It stopped with the run, and deleted its checkpoint row.
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM cache_cdc_checkpoint").Scan(&n))
	require.Zero(t, n)
}

// runExample runs the example and logs its narrative.
func runExample(t *testing.T, db *sql.DB, rdb *redis.Client, cfg config) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	var out strings.Builder
	res, err := run(ctx, &out, db, rdb, cfg)
	t.Log("\n" + out.String())
	require.NoError(t, err)
	return res
}

// checkRun checks what holds with and without a relay.
func checkRun(t *testing.T, db *sql.DB, rdb *redis.Client, prefix string, res result) {
	t.Helper()

	// The readers never failed, and did read.
	require.Zero(t, res.ReadErrors)
	for _, r := range []string{"billing", "alerting", "dashboard"} {
		require.Positive(t, res.Reads[r], r)
	}

	// After the webhooks, every Get equals the database.
	require.Equal(t, res.SIMs, res.Checked)
	require.Zero(t, res.Mismatches)

	// The migration window: the passes find (and evict) only entries the
	// copier lagged on; a later pass finds none.
	require.GreaterOrEqual(t, len(res.Rounds), 2)
	first, last := res.Rounds[0], res.Rounds[len(res.Rounds)-1]
	require.Positive(t, first.Lagging)
	require.EqualValues(t, first.Reconcile.Divergent, first.StaleFound, "the counter matches the pass")
	require.LessOrEqual(t, first.Reconcile.Divergent, first.Lagging, "only SIMs the copier lagged on can be stale")
	require.Zero(t, first.Reconcile.Errors)
	require.Zero(t, last.Reconcile.Divergent)
	require.Zero(t, last.StaleFound)
	found := uint64(res.After.Divergent)
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
