package cdc_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// The integration tests start their own mariadbd with a binlog
// (testenv.StartMariaDB) and use the real Redis (CACHE_REDIS_ADDR, default
// 127.0.0.1:6379). Without them they skip, except under CI (CI set) or
// with CACHE_REQUIRE_SERVERS=1, where they fail.

// long runs the long variants (more kills, more rows, longer traffic).
var long = flag.Bool("cdc.long", false, "run the long variants of the relay's integration tests")

// quiet is the relays' logger in tests: warnings and errors only.
func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// user is the row type of the tests' Loaders.
type user struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Version int64  `json:"version"`
}

func (u user) CacheVersion() int64 { return u.Version }

// source is a local mariadbd with a binlog and its test database.
type source struct {
	m  *testenv.LocalMariaDB
	db *sql.DB
}

// startSource starts a server of the test's own: for tests that kill or
// reconfigure it.
func startSource(t testing.TB) *source {
	t.Helper()
	m := testenv.StartMariaDB(t, testenv.MariaDBConfig{ServerID: 1})
	return &source{m: m, db: m.DB(t)}
}

// The server the package's tests share (started by the first that needs
// it, stopped by TestMain): each test has tables and relay names of its
// own, and no test reconfigures it.
var shared struct {
	once sync.Once
	dir  string
	src  *source
	err  error
}

// sharedSource returns the shared server.
func sharedSource(t testing.TB) *source {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "cdctest-mariadb-")
		if shared.err != nil {
			return
		}
		m, err := testenv.NewMariaDB(shared.dir, testenv.MariaDBConfig{ServerID: 1})
		if err != nil {
			shared.err = err
			return
		}
		db, err := sql.Open("mysql", m.DSN("test"))
		if err != nil {
			m.Stop()
			shared.err = err
			return
		}
		db.SetMaxOpenConns(64)
		db.SetMaxIdleConns(64)
		shared.src = &source{m: m, db: db}
	})
	if shared.err != nil {
		testenv.Unreachable(t, "a local mariadbd with a binlog", shared.err)
	}
	return shared.src
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.src != nil {
		shared.src.db.Close()
		shared.src.m.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// dsn is the DSN a relay of the test database uses.
func (s *source) dsn() string { return s.m.DSN("test") }

// usersTable creates a users table with n rows (ids 1..n, version 1).
func (s *source) usersTable(t testing.TB, n int) string {
	t.Helper()
	name := testenv.Table(t, s.db, "users")
	mustExec(t, s.db, "CREATE TABLE "+name+" (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB")
	for lo := 1; lo <= n; lo += 1000 {
		q := "INSERT INTO " + name + " (id, name, version) VALUES "
		for i := lo; i < lo+1000 && i <= n; i++ {
			if i > lo {
				q += ","
			}
			q += fmt.Sprintf("(%d, 'u%d', 1)", i, i)
		}
		mustExec(t, s.db, q)
	}
	return name
}

func mustExec(t testing.TB, db *sql.DB, q string, args ...any) sql.Result {
	t.Helper()
	res, err := db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return res
}

// userLoader is a Loader of table's rows over rdb, with prefix of its own.
func userLoader(t testing.TB, rdb redis.UniversalClient, db *sql.DB, table, prefix string, opts *cache.Options) *cache.Loader[user] {
	t.Helper()
	var o cache.Options
	if opts != nil {
		o = *opts
	}
	o.Prefix = prefix
	if o.Logger == nil {
		o.Logger = quiet()
	}
	l, err := cache.New(rdb, "user", func(ctx context.Context, key string) (user, error) {
		return loadUser(ctx, db, table, key)
	}, &o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func loadUser(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, table, key string) (user, error) {
	var u user
	err := db.QueryRowContext(ctx, "SELECT id, name, version FROM "+table+" WHERE id = ?", key).Scan(&u.ID, &u.Name, &u.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return u, cache.ErrNotFound
	}
	return u, err
}

// startRelay runs a relay until the test ends and waits until it leads.
func startRelay(t testing.TB, dsn string, rules []cdc.Rule, opts *cdc.Options) *cdc.Relay {
	t.Helper()
	r := runRelay(t, dsn, rules, opts)
	waitFor(t, 30*time.Second, "the relay to lead", func() bool { return r.Stats().Leader })
	return r
}

// runRelay runs a relay until the test ends, without waiting.
func runRelay(t testing.TB, dsn string, rules []cdc.Rule, opts *cdc.Options) *cdc.Relay {
	t.Helper()
	var o cdc.Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = quiet()
	}
	if o.Name == "" {
		o.Name = "test-" + testenv.Random(4)
	}
	r, err := cdc.New(dsn, rules, &o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("relay: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("relay did not stop within 20s")
		}
		r.Close()
	})
	return r
}

// waitFor polls cond every 5ms until it holds, or fails the test.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// caughtUp waits until the relay has applied every transaction the server
// had when it was called.
func caughtUp(t testing.TB, s *source, r *cdc.Relay) {
	t.Helper()
	var gtid string
	if err := s.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	want, err := cdc.ParsePosition("gtid:" + gtid)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the relay to apply "+gtid, func() bool {
		return covers(r.Stats().Applied.GTID, want.GTID)
	})
}

// covers reports whether MariaDB GTID set a includes b (per domain, a's
// sequence number is at least b's).
func covers(a, b string) bool {
	seqs := func(s string) map[string]uint64 {
		out := map[string]uint64{}
		for _, g := range splitComma(s) {
			var d, srv, seq uint64
			if _, err := fmt.Sscanf(g, "%d-%d-%d", &d, &srv, &seq); err == nil {
				out[strconv.FormatUint(d, 10)] = seq
			}
		}
		return out
	}
	sa := seqs(a)
	for d, seq := range seqs(b) {
		if sa[d] < seq {
			return false
		}
	}
	return true
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// recorder is a Target that records what it was asked to invalidate, and
// fails while fail is set.
type recorder struct {
	name string
	mu   sync.Mutex // protects the fields below
	kvs  []cache.KeyVersion
	fail error
	// calls counts InvalidateVersions calls, failed ones included.
	calls int
}

func (r *recorder) Name() string { return r.name }

func (r *recorder) InvalidateVersions(ctx context.Context, kvs ...cache.KeyVersion) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	r.kvs = append(r.kvs, kvs...)
	return nil
}

// floors returns the highest floor recorded per key.
func (r *recorder) floors() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int64{}
	for _, kv := range r.kvs {
		if v, ok := out[kv.Key]; !ok || kv.Version > v {
			out[kv.Key] = kv.Version
		}
	}
	return out
}

func (r *recorder) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.kvs = nil
	r.mu.Unlock()
}
