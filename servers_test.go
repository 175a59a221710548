package cache

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"reflect"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// Integration tests reach the real servers through internal/testenv:
// CACHE_REDIS_ADDR and CACHE_MYSQL_DSN name them; unreachable, a test
// skips, or fails under CI (CI set) or with CACHE_REQUIRE_SERVERS=1.

func unreachable(t testing.TB, what string, err error) {
	t.Helper()
	testenv.Unreachable(t, what, err)
}

func redisAddr() string { return testenv.RedisAddr() }

func mysqlDSN() string { return testenv.MySQLDSN() }

// realRedis returns a new client of the real Redis, closed with the test,
// as a separate process would have.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	return testenv.Redis(t, "")
}

// uniquePrefix returns a key prefix no other test uses, cleaned up after.
func uniquePrefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	return testenv.Prefix(t, rdb, "cachetest:")
}

// realMySQL returns a pool of the real MariaDB/MySQL.
func realMySQL(t testing.TB) *sql.DB {
	t.Helper()
	return testenv.MySQL(t)
}

// uniqueTable returns a table name no other test uses, dropped after.
func uniqueTable(t testing.TB, db *sql.DB, base string) string {
	t.Helper()
	return testenv.Table(t, db, base)
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
	// Loaders log to slog.Default by default; the faults the tests inject
	// on purpose would fill the output.
	slog.SetDefault(slog.New(slog.DiscardHandler))
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
