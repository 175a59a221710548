package outbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

// Integration tests reach the real servers named by CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When a server cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.
// (The same helpers as package cache's; test files cannot be imported.)

func requireServers() bool {
	return os.Getenv("CI") != "" || os.Getenv("CACHE_REQUIRE_SERVERS") == "1"
}

func unreachable(t testing.TB, what string, err error) {
	t.Helper()
	if requireServers() {
		t.Fatalf("%s unreachable (required under CI): %v", what, err)
	}
	t.Skipf("%s unreachable: %v (set CACHE_REQUIRE_SERVERS=1 to fail instead)", what, err)
}

func redisAddr() string {
	if a := os.Getenv("CACHE_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// realRedis returns a new client of the real Redis, closed with the test.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		unreachable(t, "redis at "+redisAddr(), err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// uniquePrefix returns a key prefix no other test (or run) uses; the keys
// under it are deleted when the test ends.
func uniquePrefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	p := "outboxtest:" + randHex(6) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, p+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return p
}

func mysqlDSN() string {
	if d := os.Getenv("CACHE_MYSQL_DSN"); d != "" {
		return d
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// realMySQL returns a connection pool to the real MariaDB/MySQL.
func realMySQL(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", mysqlDSN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		unreachable(t, "mysql at "+mysqlDSN(), err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	t.Cleanup(func() { db.Close() })
	return db
}

// uniqueTable returns a table name no other test uses; the table is dropped
// when the test ends.
func uniqueTable(t testing.TB, db *sql.DB, base string) string {
	t.Helper()
	name := base + "_" + randHex(4)
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// quiet drops the clients' own log lines (go-redis dial retries, the MySQL
// driver's bad-connection notices): some tests cause them on purpose.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
func (quiet) Print(...any)                           {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	_ = mysql.SetLogger(quiet{})
	os.Exit(m.Run())
}
