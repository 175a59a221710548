package main

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// These tests need a real Redis and MySQL/MariaDB: CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When one cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

// testRedisTimeout replaces the 50 ms default: the exact counts asserted
// below would blame the cache for a loopback call that the race detector
// on a busy machine stretched past it (the Get then answers from MySQL, as
// it should, and a hit becomes a miss).
const testRedisTimeout = 2 * time.Second

func TestRun(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	var out strings.Builder
	s, err := run(t.Context(), &out, db, rdb, table, &cache.Options{Prefix: prefix, RedisTimeout: testRedisTimeout})
	t.Log("\n" + out.String())
	require.NoError(t, err)
	require.EqualValues(t, 2, s.Loads, "user 1 once, the missing id once")
	require.EqualValues(t, 2, s.Hits, "warm get and get after rename")
	require.EqualValues(t, 1, s.NegativeHits)
	require.Zero(t, s.RedisErrors)
}

func TestCachedUsers(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	ctx := t.Context()
	repo, err := NewUserRepo(db, table)
	require.NoError(t, err)
	require.NoError(t, repo.Setup(ctx))
	users, err := NewCachedUsers(repo, rdb, &cache.Options{Prefix: prefix, RedisTimeout: testRedisTimeout})
	require.NoError(t, err)
	defer users.Close()

	// Cold: the first Get loads from MySQL.
	u, err := users.ByID(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, User{ID: 2, Name: "Alan Turing", Email: "alan@example.com", Version: 1}, u)
	s := users.Stats()
	require.EqualValues(t, 1, s.Loads)
	require.EqualValues(t, 1, s.Misses)
	require.Zero(t, s.Hits)

	// Warm: the second is a hit.
	u, err = users.ByID(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, "Alan Turing", u.Name)
	s = users.Stats()
	require.EqualValues(t, 1, s.Loads)
	require.EqualValues(t, 1, s.Hits)

	// Rename commits to MySQL and stores the new row: the next Get is a hit
	// with the new name and version, and MySQL agrees.
	u, err = users.Rename(ctx, 2, "Alan M. Turing")
	require.NoError(t, err)
	require.Equal(t, User{ID: 2, Name: "Alan M. Turing", Email: "alan@example.com", Version: 2}, u)
	u, err = users.ByID(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, "Alan M. Turing", u.Name)
	require.EqualValues(t, 2, u.Version)
	s = users.Stats()
	require.EqualValues(t, 1, s.Loads, "the write-through value was served from Redis")
	require.EqualValues(t, 2, s.Hits)
	dbu, err := repo.ByID(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, u, dbu)

	// Missing: sql.ErrNoRows becomes cache.ErrNotFound, cached negatively.
	_, err = users.ByID(ctx, 404)
	require.ErrorIs(t, err, cache.ErrNotFound)
	_, err = users.ByID(ctx, 404)
	require.ErrorIs(t, err, cache.ErrNotFound)
	s = users.Stats()
	require.EqualValues(t, 2, s.Loads)
	require.EqualValues(t, 1, s.NegativeHits)

	// Renaming a missing user fails in MySQL and leaves Redis alone.
	_, err = users.Rename(ctx, 404, "nobody")
	require.ErrorIs(t, err, sql.ErrNoRows)

	require.Zero(t, users.Stats().RedisErrors)
}

func TestBadTableName(t *testing.T) {
	_, err := NewUserRepo(nil, "users; DROP TABLE users")
	require.Error(t, err)
}

// servers returns connections to the real servers (see internal/testenv:
// skipped when unreachable, failed under CI), a fresh table (dropped at the
// end) and a fresh Redis key prefix (its keys deleted at the end).
func servers(t *testing.T) (*sql.DB, *redis.Client, string, string) {
	t.Helper()
	rdb := testenv.Redis(t, "")
	db := testenv.MySQL(t)
	return db, rdb, testenv.Table(t, db, "users_example"), testenv.Prefix(t, rdb, "cache-example-test:")
}
