// Package testenv gives the module's tests the real Redis and MySQL/MariaDB
// they run against, and the rules for reaching them: the servers are named
// by CACHE_REDIS_ADDR (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test); a test that cannot reach one skips, except
// under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where it fails. Tests
// never flush: they get key prefixes and table names of their own, cleaned
// up when they end.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the driver the DSNs name
	"github.com/redis/go-redis/v9"
)

// Required reports whether an unreachable server must fail the test.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("CACHE_REQUIRE_SERVERS") == "1"
}

// Unreachable fails (under CI) or skips the test: what could not be reached.
func Unreachable(t testing.TB, what string, err error) {
	t.Helper()
	if Required() {
		t.Fatalf("%s unreachable (required under CI): %v", what, err)
	}
	t.Skipf("%s unreachable: %v (set CACHE_REQUIRE_SERVERS=1 to fail instead)", what, err)
}

// RedisAddr is the real Redis's address.
func RedisAddr() string {
	if a := os.Getenv("CACHE_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// MySQLDSN is the real MySQL/MariaDB's DSN.
func MySQLDSN() string {
	if d := os.Getenv("CACHE_MYSQL_DSN"); d != "" {
		return d
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// Redis returns a new client of the real Redis at addr (RedisAddr() when
// empty), with ContextTimeoutEnabled, closed when the test ends. Every
// call returns a separate client, as a separate process would have.
func Redis(t testing.TB, addr string) *redis.Client {
	t.Helper()
	if addr == "" {
		addr = RedisAddr()
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		Unreachable(t, "redis at "+addr, err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// MySQL returns a pool of the real MySQL/MariaDB, closed when the test ends.
func MySQL(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", MySQLDSN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		Unreachable(t, "mysql at "+MySQLDSN(), err)
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	t.Cleanup(func() { db.Close() })
	return db
}

// Prefix returns base + a random part + ":", a key prefix no other test (or
// run) uses; the keys under it are deleted when the test ends (bounded: the
// test may have left Redis unreachable).
func Prefix(t testing.TB, rdb redis.UniversalClient, base string) string {
	t.Helper()
	p := base + Random(6) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		del := func(ctx context.Context, c redis.UniversalClient) error {
			iter := c.Scan(ctx, 0, p+"*", 1000).Iterator()
			for iter.Next(ctx) {
				c.Del(ctx, iter.Val())
			}
			return iter.Err()
		}
		if cc, ok := rdb.(*redis.ClusterClient); ok { // SCAN sees one node
			cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return del(ctx, m) })
			return
		}
		del(ctx, rdb)
	})
	return p
}

// Table returns base + "_" + a random part, a table name no other test
// uses; the table is dropped when the test ends.
func Table(t testing.TB, db *sql.DB, base string) string {
	t.Helper()
	name := base + "_" + Random(4)
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

// Random returns 2n random hex digits.
func Random(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
