package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// These tests need a real Redis and MySQL/MariaDB: CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When one cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

// testConfig is a smaller run than the command's default. RedisTimeout is
// generous: a Redis call that times out is answered from the database, and
// the exact counts asserted below would blame the cache for a loopback call
// the race detector on a busy machine stretched past the 50 ms default.
func testConfig(prefix string) Config {
	return Config{Prefix: prefix, Users: 1000, Requests: 2000, Workers: 8, Seed: 7, RedisTimeout: time.Second}
}

func TestRun(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	cfg := testConfig(prefix)
	var out strings.Builder
	start := time.Now()
	rep, err := run(t.Context(), &out, db, rdb, table, cfg)
	t.Logf("the whole rollout took %v\n%s", time.Since(start).Round(time.Millisecond), out.String())
	require.NoError(t, err)

	users := int64(cfg.Users)
	// Before: version 1, warm, reads nothing from the database.
	require.Equal(t, users, rep.Warmup.DBReads, "version 1 loads every user once to get warm")
	require.Zero(t, rep.Before.DBReads, "warm version 1")

	// The naive rollout: the hit rate collapses on the first pass.
	require.Equal(t, users, rep.Naive.Gets)
	require.Less(t, rep.Naive.HitRate(), 0.10, "naive rollout, first pass")
	require.Zero(t, rep.Naive.Migrated)

	// With the fallback, the first pass of version 2 over version 1's warm
	// namespace is answered from it, while version 1 keeps serving.
	require.GreaterOrEqual(t, rep.DuringV2.HitRate(), 0.95, "version 2 with the fallback, first pass")
	require.Greater(t, rep.Touched, 0)
	// Every user version 2 touched got its new entry from the old one: the
	// hit rate is not just repeated Gets of a few hot users.
	require.GreaterOrEqual(t, float64(rep.DuringV2.Migrated), 0.95*float64(rep.Touched),
		"first Gets in the new format migrated, not loaded")
	require.LessOrEqual(t, rep.DuringV2.Migrated, int64(rep.Touched))
	require.GreaterOrEqual(t, rep.DuringV1.HitRate(), 0.95, "version 1 during the rollout")

	// Warm fills the new format for the rest, also from the old entries.
	require.EqualValues(t, cfg.Users-rep.Touched, rep.Warm.Gets)
	require.Equal(t, cache.WarmResult{Done: cfg.Users - rep.Touched, Loaded: cfg.Users - rep.Touched}, rep.WarmStats)
	require.Zero(t, rep.Warm.DBReads, "the untouched users are converted, not loaded")
	require.Equal(t, rep.Warm.Gets, rep.Warm.Migrated)

	// After: version 2 alone serves a whole pass, and Zipf traffic, from
	// its own entries.
	require.Equal(t, users, rep.AfterPass.Gets)
	require.Zero(t, rep.AfterPass.DBReads, "a pass over every user after Warm")
	require.Equal(t, users, rep.AfterPass.Hits)
	require.Zero(t, rep.After.DBReads)
	require.Equal(t, rep.After.Gets, rep.After.Hits)

	// The repository's own count agrees with the loaders': the database was
	// read by version 1's warm-up, the naive rollout and nothing else.
	var loads int64
	for _, p := range rep.Phases() {
		loads += p.DBReads
	}
	require.Equal(t, rep.DBReads, loads)
	require.Equal(t, rep.Warmup.DBReads+rep.Naive.DBReads+rep.DuringV2.DBReads, rep.DBReads)

	// The cleanup the command does finds every key under the prefix.
	n, err := deleteKeys(t.Context(), rdb, prefix)
	require.NoError(t, err)
	require.EqualValues(t, 3*cfg.Users, n, "v1, naive v2 and v2: one entry per user each")
	n, err = deleteKeys(t.Context(), rdb, prefix)
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestFallbackValues: what version 2 serves from a migrated entry is what it
// would have loaded, and writes through version 2 also void version 1's
// entry, for the pods still on version 1.
func TestFallbackValues(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	ctx := t.Context()
	repo, err := NewRepo(db, table)
	require.NoError(t, err)
	require.NoError(t, repo.Setup(ctx, 3))

	cfg := testConfig(prefix)
	cfg.defaults()
	v1, err := NewV1(rdb, repo, options(&cfg, prefix))
	require.NoError(t, err)
	defer v1.Close()
	opts := options(&cfg, prefix+"v2:")
	opts.PreviousKeyPrefix = prefix + "user#2:"
	opts.Migrate = MigrateProfile
	v2, err := NewV2(rdb, repo, opts)
	require.NoError(t, err)
	defer v2.Close()
	require.Equal(t, prefix+"user#2:2:profile", v1.Key(ProfileKey(2)))
	require.Equal(t, prefix+"v2:user#2:2:profile", v2.Key(ProfileKey(2)))

	p1, err := v1.Get(ctx, ProfileKey(2))
	require.NoError(t, err)
	require.Equal(t, ProfileV1{ID: 2, Name: "User 2", Email: "user2@example.com", Version: 1}, p1)
	require.EqualValues(t, 1, repo.Reads())

	p2, err := v2.Get(ctx, ProfileKey(2))
	require.NoError(t, err)
	require.Equal(t, ProfileV2{ID: 2, DisplayName: "User 2", Contact: Contact{Email: "user2@example.com"}, Version: 1}, p2)
	require.EqualValues(t, 1, repo.Reads(), "converted from version 1's entry")
	require.EqualValues(t, 1, v2.Stats().Migrated)
	raw, err := rdb.GetRange(ctx, v2.Key(ProfileKey(2)), entry.HeaderSize, -1).Result() // the payload after the entry's header
	require.NoError(t, err)
	require.JSONEq(t, `{"id":2,"display_name":"User 2","contact":{"email":"user2@example.com"},"version":1}`, raw)
	// The new entry keeps the old one's remaining TTL.
	ttl1, err := rdb.PTTL(ctx, v1.Key(ProfileKey(2))).Result()
	require.NoError(t, err)
	ttl2, err := rdb.PTTL(ctx, v2.Key(ProfileKey(2))).Result()
	require.NoError(t, err)
	require.Greater(t, ttl2, time.Duration(0))
	require.LessOrEqual(t, ttl2, ttl1+time.Second)

	// A user version 1 never cached is loaded, in the new shape.
	p3, err := v2.Get(ctx, ProfileKey(3))
	require.NoError(t, err)
	require.Equal(t, ProfileV2{ID: 3, DisplayName: "User 3", Contact: Contact{Email: "user3@example.com"}, Version: 1}, p3)
	require.EqualValues(t, 2, repo.Reads())
	require.EqualValues(t, 1, v2.Stats().Migrated)

	// A write through version 2 invalidates both formats: version 1 reloads
	// the new row instead of serving its old entry.
	_, err = v2.WriteThrough(ctx, ProfileKey(2), func(ctx context.Context) (ProfileV2, error) {
		if _, err := db.ExecContext(ctx, "UPDATE "+table+" SET name = 'Ada', version = version + 1 WHERE id = 2"); err != nil {
			return ProfileV2{}, err
		}
		p, err := repo.ByID(ctx, 2)
		return ToV2(p), err
	})
	require.NoError(t, err)
	p1, err = v1.Get(ctx, ProfileKey(2))
	require.NoError(t, err)
	require.Equal(t, "Ada", p1.Name)
	require.EqualValues(t, 2, p1.Version)
	p2, err = v2.Get(ctx, ProfileKey(2))
	require.NoError(t, err)
	require.Equal(t, "Ada", p2.DisplayName)
}

func TestMigrateProfile(t *testing.T) {
	b, err := MigrateProfile([]byte(`{"id":7,"name":"Grace","email":"grace@example.com","version":3}`))
	require.NoError(t, err)
	var p ProfileV2
	require.NoError(t, json.Unmarshal(b, &p))
	require.Equal(t, ProfileV2{ID: 7, DisplayName: "Grace", Contact: Contact{Email: "grace@example.com"}, Version: 3}, p)

	for _, bad := range []string{``, `not json`, `{}`, `{"id":7,"name":"Grace"}`, `[1,2]`} {
		_, err := MigrateProfile([]byte(bad))
		require.Error(t, err, "%q", bad)
	}
}

func TestProfileKey(t *testing.T) {
	require.Equal(t, "42:profile", ProfileKey(42))
	id, err := parseProfileKey("42:profile")
	require.NoError(t, err)
	require.EqualValues(t, 42, id)
	for _, bad := range []string{"42", "x:profile", ":profile", "42:settings"} {
		_, err := parseProfileKey(bad)
		require.Error(t, err, bad)
	}
	_, err = NewRepo(nil, "profiles; DROP TABLE profiles")
	require.Error(t, err)
}

// servers returns connections to the real servers, a fresh table name (the
// table is dropped at the end) and a fresh Redis key prefix (its keys are
// deleted at the end).
func servers(t *testing.T) (*sql.DB, *redis.Client, string, string) {
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

	id := randomHex()
	table := "profiles_keymigration_" + id
	prefix := "cache-keymigration-test:" + id + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
			t.Errorf("drop %s: %v", table, err)
		}
		if _, err := deleteKeys(ctx, rdb, prefix); err != nil {
			t.Errorf("delete keys %s*: %v", prefix, err)
		}
	})
	return db, rdb, table, prefix
}

func unreachable(t *testing.T, what string, err error) {
	t.Helper()
	testenv.Unreachable(t, what, err)
}
