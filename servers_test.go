package cache

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

// Integration tests reach the real servers named by CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When a server cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

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
// Every call returns a separate client (a separate connection pool), as a
// separate process would have.
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
	var b [6]byte
	rand.Read(b[:])
	p := "cachetest:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		// Bounded: the test may have left Redis unreachable.
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
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	t.Cleanup(func() { db.Close() })
	return db
}

// uniqueTable returns a table name no other test uses; the table is dropped
// when the test ends.
func uniqueTable(t testing.TB, db *sql.DB, base string) string {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := base + "_" + hex.EncodeToString(b[:])
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

// fakeRedis returns an in-process Redis and a client of it.
func fakeRedis(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return mr, rdb
}

// newClient returns another client of addr, as another process would have.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// quiet drops the clients' own log lines (go-redis dial retries, the MySQL
// driver's bad-connection notices): the fault tests cause them on purpose.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
func (quiet) Print(...any)                           {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	_ = mysql.SetLogger(quiet{})
	os.Exit(m.Run())
}

// sumStats adds up the counters of several Loaders (processes).
func sumStats[T any](loaders []*Loader[T]) Stats {
	var s Stats
	for _, l := range loaders {
		s = s.combine(l.Stats(), 1)
	}
	return s
}

// minus returns the counters of s less those of b.
func (s Stats) minus(b Stats) Stats { return s.combine(b, -1) }

// combine adds sign × every uint64 counter of o to s's.
func (s Stats) combine(o Stats, sign int) Stats {
	sv, ov := reflect.ValueOf(&s).Elem(), reflect.ValueOf(o)
	for i := range sv.NumField() {
		if f := sv.Field(i); f.Kind() == reflect.Uint64 {
			if sign > 0 {
				f.SetUint(f.Uint() + ov.Field(i).Uint())
			} else {
				f.SetUint(f.Uint() - ov.Field(i).Uint())
			}
		}
	}
	return s
}
