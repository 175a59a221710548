package outbox_test

import (
	"context"
	"database/sql"
	"os"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// Integration tests reach the real servers named by CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When a server cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.
// (internal/testenv holds the rules; these are the package's short names.)

func redisAddr() string { return testenv.RedisAddr() }

func mysqlDSN() string { return testenv.MySQLDSN() }

// realRedis returns a new client of the real Redis, closed with the test.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	return testenv.Redis(t, "")
}

// uniquePrefix returns a key prefix no other test uses, cleaned up after.
func uniquePrefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	return testenv.Prefix(t, rdb, "outboxtest:")
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
