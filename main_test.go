package cache

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

// Integration tests reach the real servers through internal/testenv:
// CACHE_REDIS_ADDR and CACHE_MYSQL_DSN name them; unreachable, a test
// skips, or fails under CI (CI set) or with CACHE_REQUIRE_SERVERS=1.

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
