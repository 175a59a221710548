package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
)

// These tests need a real Redis and MySQL/MariaDB: CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When one cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

func TestRun(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	var out strings.Builder
	s, err := run(t.Context(), &out, db, rdb, table, &cache.Options{Prefix: prefix})
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
	users, err := NewCachedUsers(repo, rdb, &cache.Options{Prefix: prefix})
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

// servers returns connections to the real servers, a fresh table (dropped
// at the end) and a fresh Redis key prefix (its keys deleted at the end).
func servers(t *testing.T) (*sql.DB, *redis.Client, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	rdb := redis.NewClient(&redis.Options{Addr: env("CACHE_REDIS_ADDR", "127.0.0.1:6379"), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(ctx).Err(); err != nil {
		unreachable(t, "redis", err)
	}
	db, err := sql.Open("mysql", env("CACHE_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	if err := db.PingContext(ctx); err != nil {
		unreachable(t, "mysql", err)
	}

	id := randomHex(t)
	table := "users_example_" + id
	prefix := "cache-example-test:" + id + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
			t.Errorf("drop %s: %v", table, err)
		}
		iter := rdb.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("delete keys %s*: %v", prefix, err)
		}
	})
	return db, rdb, table, prefix
}

func unreachable(t *testing.T, what string, err error) {
	t.Helper()
	if os.Getenv("CI") != "" || os.Getenv("CACHE_REQUIRE_SERVERS") == "1" {
		t.Fatalf("%s unreachable (required under CI or CACHE_REQUIRE_SERVERS=1): %v", what, err)
	}
	t.Skipf("%s unreachable: %v (set CACHE_REQUIRE_SERVERS=1 to fail instead)", what, err)
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func randomHex(t *testing.T) string {
	var b [6]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return hex.EncodeToString(b[:])
}
