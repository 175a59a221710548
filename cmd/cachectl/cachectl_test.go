package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// The tests drive run against the real Redis (CACHE_REDIS_ADDR, default
// 127.0.0.1:6379) and MariaDB (CACHE_MYSQL_DSN, default
// root@tcp(127.0.0.1:3306)/test). They skip when a server is unreachable,
// except under CI or with CACHE_REQUIRE_SERVERS=1. They never flush: keys
// live under a unique prefix and tables have unique names, both removed at
// the end.

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
	return testenv.Prefix(t, rdb, "cachectltest:")
}

// realMySQL returns a pool of the real MariaDB/MySQL.
func realMySQL(t testing.TB) *sql.DB {
	t.Helper()
	return testenv.MySQL(t)
}

func randHex(n int) string { return testenv.Random(n) }

// User is a versioned row of the test table.
type User struct {
	ID      int64
	Name    string
	Version int64
}

func (u User) CacheVersion() int64 { return u.Version }

// fixture is a users table and a Loader of it with a unique key prefix.
type fixture struct {
	rdb    *redis.Client
	db     *sql.DB
	table  string
	users  *cache.Loader[User]
	prefix string // full key prefix: Options.Prefix + "user#2:"
}

func newFixture(t *testing.T, opts cache.Options) *fixture {
	t.Helper()
	rdb := realRedis(t)
	db := realMySQL(t)
	f := &fixture{rdb: rdb, db: db, table: "cachectl_users_" + randHex(4)}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + f.table) })
	if _, err := db.Exec("CREATE TABLE " + f.table + " (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, version BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	opts.Prefix = uniquePrefix(t, rdb)
	if opts.RedisTimeout == 0 {
		// The fixture's Sets must not fail on a busy machine (a 50ms
		// default budget ran out under -race beside a CPU hog).
		opts.RedisTimeout = 2 * time.Second
	}
	var err error
	f.users, err = cache.New(rdb, "user", func(ctx context.Context, id string) (User, error) {
		var u User
		err := db.QueryRowContext(ctx, "SELECT id, name, version FROM "+f.table+" WHERE id = ?", id).Scan(&u.ID, &u.Name, &u.Version)
		return u, err
	}, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.users.Close() })
	f.prefix = opts.Prefix + "user#2:"
	return f
}

func (f *fixture) insert(t *testing.T, id int64, name string, version int64) {
	t.Helper()
	if _, err := f.db.Exec("INSERT INTO "+f.table+" (id, name, version) VALUES (?, ?, ?)", id, name, version); err != nil {
		t.Fatal(err)
	}
}

// get loads id through the cache and waits until its entry is stored.
func (f *fixture) get(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	_, err := f.users.Get(ctx, id)
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		h, _ := f.rdb.GetRange(ctx, f.users.Key(id), 0, entry.HeaderSize-1).Result()
		if en, err := entry.Decode(h, 0); err == nil && en.Flags&(entry.FlagPayload|entry.FlagNegative) != 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("entry of %s never stored", id)
}

// cachectl runs the command in-process with the test's Redis.
func cachectl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), append([]string{"-redis", redisAddr()}, args...), &o, &e)
	return o.String(), e.String(), code
}

// cachectlJSON runs the command with -json and decodes its output into v.
func cachectlJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, errOut, code := cachectl(t, append([]string{"-json"}, args...)...)
	if code != exitOK {
		t.Fatalf("cachectl %v: exit %d: %s%s", args, code, errOut, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("cachectl %v: %v in %s", args, err, out)
	}
}

func TestInspect(t *testing.T) {
	f := newFixture(t, cache.Options{TTL: time.Minute, DisableJitter: true})
	f.insert(t, 1, "Ada", 3)
	f.get(t, "1")
	key := f.users.Key("1")

	var r entryReport
	cachectlJSON(t, &r, "inspect", key)
	if !r.Exists || r.State != "value" || r.Version != 3 || r.Flags != 0 || r.Negative || r.Invalidated || !r.Fresh {
		t.Fatalf("inspect: %+v", r)
	}
	if r.HardTTLMs <= 50_000 || r.HardTTLMs > 60_000 {
		t.Errorf("hard TTL %dms, want about 60s", r.HardTTLMs)
	}
	if r.SoftTTLMs == nil || *r.SoftTTLMs <= 50_000 || *r.SoftTTLMs > 60_000 {
		t.Errorf("soft TTL %v, want about 60s", r.SoftTTLMs)
	}
	if r.Generation == 0 || r.LeaseHolder != "" || !r.HasPayload || !strings.Contains(r.Preview, `"Ada"`) || r.PayloadBytes == 0 {
		t.Errorf("inspect: %+v", r)
	}

	// Human output, with -json after the key meaning JSON again.
	out, errOut, code := cachectl(t, "inspect", key)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"state:       value", "version:     3", "flags:       0 (none)", "hard TTL:    5", "soft TTL:    5", `"Name":"Ada"`} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	var r2 entryReport
	out, _, _ = cachectl(t, "inspect", key, "-json")
	if err := json.Unmarshal([]byte(out), &r2); err != nil || r2.Version != 3 {
		t.Errorf("inspect KEY -json: %v %s", err, out)
	}

	// A missing row: a negative entry.
	f.get(t, "404")
	cachectlJSON(t, &r, "inspect", f.users.Key("404"))
	if !r.Exists || !r.Negative || r.Flags != 1 || r.HasPayload || !r.Fresh {
		t.Errorf("negative entry: %+v", r)
	}
	out, _, _ = cachectl(t, "inspect", f.users.Key("404"))
	if !strings.Contains(out, "flags:       1 (negative)") {
		t.Errorf("negative entry output:\n%s", out)
	}

	// Not an entry: error, exit 1.
	str := f.prefix + "not-an-entry"
	f.rdb.Set(context.Background(), str, "x", time.Minute)
	if _, errOut, code := cachectl(t, "inspect", str); code != exitError || !strings.Contains(errOut, "not a cache entry") {
		t.Errorf("string key: exit %d, %s", code, errOut)
	}
}

func TestInvalidate(t *testing.T) {
	f := newFixture(t, cache.Options{TTL: time.Minute})
	f.insert(t, 1, "Ada", 3)
	f.get(t, "1")
	key := f.users.Key("1")

	out, errOut, code := cachectl(t, "invalidate", "-tombstone", "7s", key, f.users.Key("never-read"))
	if code != exitOK || !strings.Contains(out, "invalidated "+key+" ") {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	// A key that held no entry (a typo at 2 a.m.?) says so.
	if !strings.Contains(out, "ABSENT "+f.users.Key("never-read")+": there was no entry") || strings.Contains(out, "invalidated "+f.users.Key("never-read")) {
		t.Errorf("absent key not reported as absent:\n%s", out)
	}
	var res []invalidateResult
	cachectlJSON(t, &res, "invalidate", "-tombstone", "7s", key, f.prefix+"typo")
	if len(res) != 2 || !res[0].Invalidated || res[0].Absent || !res[1].Invalidated || !res[1].Absent {
		t.Errorf("invalidate -json: %+v", res)
	}
	if err := f.rdb.Del(context.Background(), f.prefix+"typo").Err(); err != nil {
		t.Fatal(err)
	}
	var r entryReport
	cachectlJSON(t, &r, "inspect", key)
	if !r.Invalidated || r.Flags != 2 || r.HasPayload || r.Fresh || r.Version != 3 || r.State != "tombstone" {
		t.Errorf("after invalidate: %+v", r)
	}
	if r.HardTTLMs <= 0 || r.HardTTLMs > 7000 {
		t.Errorf("tombstone TTL %dms, want <= 7s", r.HardTTLMs)
	}
	cachectlJSON(t, &r, "inspect", f.users.Key("never-read"))
	if !r.Invalidated {
		t.Errorf("an absent key gets a tombstone too: %+v", r)
	}

	// The next Get loads the row again: change it behind the cache's back.
	if _, err := f.db.Exec("UPDATE " + f.table + " SET name = 'Grace', version = 4 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	u, err := f.users.Get(context.Background(), "1")
	if err != nil || u.Name != "Grace" {
		t.Errorf("Get after invalidate: %+v, %v", u, err)
	}

	// Keys that are not entries are refused unless -force.
	str := f.prefix + "session"
	f.rdb.Set(context.Background(), str, "x", time.Minute)
	if _, _, code := cachectl(t, "invalidate", str); code != exitError {
		t.Errorf("string key: exit %d, want 1", code)
	}
	if v, _ := f.rdb.Get(context.Background(), str).Result(); v != "x" {
		t.Errorf("refused key changed: %q", v)
	}
	if _, errOut, code := cachectl(t, "invalidate", "-force", str); code != exitOK {
		t.Errorf("-force: exit %d: %s", code, errOut)
	}
}

func TestCompare(t *testing.T) {
	f := newFixture(t, cache.Options{TTL: time.Minute})
	f.insert(t, 1, "Ada", 3)
	f.get(t, "1")
	key := f.users.Key("1")
	query := "SELECT id, name, version FROM " + f.table + " WHERE id = ?"
	// compare runs compare -json; the exit status must match the verdict:
	// 3 for DIFFER, else 0.
	compare := func() compareReport {
		t.Helper()
		var r compareReport
		out, errOut, code := cachectl(t, "-json", "compare", key, "-dsn", mysqlDSN(), "-query", query, "-arg", "1")
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("compare: exit %d, %v: %s%s", code, err, out, errOut)
		}
		want := exitOK
		if strings.HasPrefix(r.Verdict, "DIFFER") {
			want = exitDiffer
		}
		if code != want || r.Differ != (want == exitDiffer) {
			t.Fatalf("compare %q: exit %d, differ %v; want exit %d", r.Verdict, code, r.Differ, want)
		}
		return r
	}

	r := compare()
	if !r.Agree || r.Newer != "" || len(r.Fields) != 3 || r.RowVersion == nil || *r.RowVersion != 3 {
		t.Fatalf("fresh entry: %+v", r)
	}
	out, errOut, code := cachectl(t, "compare", key, "-dsn", mysqlDSN(), "-query", query, "-arg", "1")
	if code != exitOK || !strings.Contains(out, "verdict:   agree (version 3)") || !strings.Contains(out, `"name":"Ada"`) {
		t.Errorf("human compare: exit %d\n%s%s", code, out, errOut)
	}

	// Changed behind the cache's back with a version bump.
	if _, err := f.db.Exec("UPDATE " + f.table + " SET name = 'Grace', version = 4 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	r = compare()
	if r.Agree || r.Newer != "database" || !strings.Contains(r.Verdict, "database is newer") {
		t.Errorf("row newer: %+v", r)
	}
	out, _, code = cachectl(t, "compare", key, "-dsn", mysqlDSN(), "-query", query, "-arg", "1")
	if !strings.Contains(out, `differs: name: database "Grace", cache "Ada"`) || code != exitDiffer {
		t.Errorf("human compare: exit %d, want %d (DIFFER), or lacks the field:\n%s", code, exitDiffer, out)
	}

	// Changed without a version bump: fields decide.
	if _, err := f.db.Exec("UPDATE " + f.table + " SET name = 'Ada', version = 3 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	f.db.Exec("UPDATE " + f.table + " SET name = 'Eve' WHERE id = 1")
	r = compare()
	if r.Agree || !strings.Contains(r.Verdict, "fields differ") {
		t.Errorf("same version, other name: %+v", r)
	}

	// After an invalidation there is nothing stale left.
	if err := f.users.Invalidate(context.Background(), "1"); err != nil {
		t.Fatal(err)
	}
	if r = compare(); !r.Agree {
		t.Errorf("tombstone: %+v", r)
	}

	// Missing flags: usage error.
	if _, _, code := cachectl(t, "compare", key); code != exitUsage {
		t.Errorf("compare without -dsn: exit %d, want 2", code)
	}

	// The query runs in a read-only transaction: a pasted statement that
	// writes fails and changes nothing.
	for _, q := range []string{
		"DELETE FROM " + f.table + " WHERE id = ?",
		"UPDATE " + f.table + " SET name = 'x' WHERE id = ?",
	} {
		out, errOut, code := cachectl(t, "compare", key, "-dsn", mysqlDSN(), "-query", q, "-arg", "1")
		if code != exitError || !strings.Contains(errOut, "READ ONLY") {
			t.Errorf("compare -query %q: exit %d, want 1 (read-only transaction)\n%s%s", q, code, out, errOut)
		}
	}
	var n int
	if err := f.db.QueryRow("SELECT COUNT(*) FROM " + f.table + " WHERE id = 1 AND name = 'Eve'").Scan(&n); err != nil || n != 1 {
		t.Errorf("the row changed under a read-only compare: %d rows, %v", n, err)
	}
}

func TestTTLSynchronizedExpiry(t *testing.T) {
	ctx := context.Background()
	fill := func(opts cache.Options) string {
		f := newFixture(t, opts)
		for i := range 50 {
			if err := f.users.Set(ctx, fmt.Sprint(i), User{ID: int64(i), Name: "u", Version: 1}); err != nil {
				t.Fatal(err)
			}
		}
		return f.prefix + "*"
	}
	synced := fill(cache.Options{TTL: time.Hour, DisableJitter: true})
	spread := fill(cache.Options{TTL: time.Hour, Jitter: 0.1})

	var r ttlReport
	cachectlJSON(t, &r, "ttl", synced, "-sample", "100")
	if r.Sampled != 50 || !r.Synced || r.PeakCount < 45 {
		t.Errorf("no jitter: %+v", r)
	}
	out, _, code := cachectl(t, "ttl", synced)
	if code != exitOK || !strings.Contains(out, "WARNING: synchronized expiry") || !strings.Contains(out, "jitter") {
		t.Errorf("no jitter, human: exit %d\n%s", code, out)
	}

	cachectlJSON(t, &r, "ttl", spread, "-sample", "100")
	if r.Sampled != 50 || r.Synced || r.PeakCount > 10 {
		t.Errorf("with jitter: %+v", r)
	}
	out, _, _ = cachectl(t, "ttl", spread)
	if strings.Contains(out, "WARNING") || !strings.Contains(out, "no synchronized expiry") {
		t.Errorf("with jitter, human:\n%s", out)
	}

	// -sample bounds the sample.
	cachectlJSON(t, &r, "ttl", synced, "-sample", "10")
	if r.Sampled > 10 {
		t.Errorf("-sample 10 sampled %d", r.Sampled)
	}
}

func TestHealth(t *testing.T) {
	rdb := realRedis(t)
	policy, err := rdb.ConfigGet(context.Background(), "maxmemory-policy").Result()
	if err != nil {
		t.Fatal(err)
	}
	var r healthReport
	cachectlJSON(t, &r, "health", "-pings", "3")
	if r.MaxmemoryPol != policy["maxmemory-policy"] || r.PingMinMs > r.PingMaxMs || r.Clients < 1 || r.UsedMemory <= 0 {
		t.Errorf("health: %+v", r)
	}
	out, errOut, code := cachectl(t, "health")
	if code != exitOK || !strings.Contains(out, "maxmemory-policy: "+policy["maxmemory-policy"]) || !strings.Contains(out, "latency:") {
		t.Errorf("health: exit %d\n%s%s", code, out, errOut)
	}
}

// The eviction policy a cache needs: noeviction and allkeys-* are warned
// about, volatile-* is not.
func TestHealthEvictionPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy    string
		maxmemory int64
		want      string // "" no warning
	}{
		{"noeviction", 0, "noeviction is wrong for a cache: when memory reaches the host's memory"},
		{"noeviction", 1 << 30, "noeviction is wrong for a cache: when memory reaches maxmemory (1073741824 bytes)"},
		{"allkeys-lru", 1 << 30, "can evict any key"},
		{"allkeys-lfu", 0, "can evict any key"},
		{"", 0, "unknown"},
		{"volatile-lru", 1 << 30, ""},
		{"volatile-ttl", 0, ""},
	} {
		got := policyWarning(tc.policy, tc.maxmemory)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s, maxmemory %d: %q; want %q", tc.policy, tc.maxmemory, got, tc.want)
		}
	}

	// On real servers of each policy, in the human output.
	for _, tc := range []struct {
		policy, want string
	}{
		{"noeviction", "WARNING: maxmemory-policy noeviction is wrong for a cache"},
		{"volatile-lru", "no warnings"},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			r := testenv.StartRedis(t, testenv.RedisConfig{Args: []string{"--maxmemory-policy", tc.policy}})
			var o, e bytes.Buffer
			code := run(context.Background(), []string{"-redis", r.Addr, "health", "-pings", "1"}, &o, &e)
			if code != exitOK || !strings.Contains(o.String(), tc.want) {
				t.Errorf("health: exit %d, want 0 and %q:\n%s%s", code, tc.want, o.String(), e.String())
			}
		})
	}
}

func TestWarmCheck(t *testing.T) {
	f := newFixture(t, cache.Options{TTL: time.Minute})
	f.insert(t, 1, "Ada", 3)
	f.get(t, "1")
	stdin = strings.NewReader("# keys\n" + f.users.Key("1") + "\n\n" + f.users.Key("2") + "\n")
	defer func() { stdin = os.Stdin }()
	var r warmReport
	cachectlJSON(t, &r, "warm", "-all")
	if r.Total != 2 || r.Fresh != 1 || r.Cold != 1 || len(r.Keys) != 2 || r.Keys[1].State != "missing" {
		t.Errorf("warm: %+v", r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nosuch"},
		{"inspect"},
		{"inspect", "a", "b"},
		{"ttl", "x", "-sample", "0"},
		{"invalidate"},
		{"-timeout", "0", "health"},
	} {
		var o, e bytes.Buffer
		if code := run(context.Background(), args, &o, &e); code != exitUsage {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"help", "inspect"}, &o, &e); code != exitOK || !strings.Contains(o.String(), "soft TTL") {
		t.Errorf("help inspect: %d %s", code, o.String())
	}
	o.Reset()
	if code := run(context.Background(), []string{"help", "invalidate"}, &o, &e); code != exitOK ||
		!strings.Contains(o.String(), "usage: cachectl [global flags] invalidate [-tombstone D] [-keep-stale] [-force] KEY ...") {
		t.Errorf("help invalidate: the usage line lacks a flag: %d\n%s", code, o.String())
	}
	// An unreachable Redis is an error, not a hang.
	start := time.Now()
	if code := run(context.Background(), []string{"-redis", "127.0.0.1:1", "-timeout", "2s", "health"}, &o, &e); code != exitError {
		t.Errorf("unreachable redis: exit %d, want 1", code)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("unreachable redis took %s", time.Since(start))
	}
}

// TestHealthLocalStreams: a Loader with the in-process tier shows as a
// stream of its key prefix.
func TestHealthLocalStreams(t *testing.T) {
	rdb := realRedis(t)
	prefix := uniquePrefix(t, rdb)
	l, err := cache.New(rdb, "user", func(context.Context, string) (User, error) { return User{}, cache.ErrNotFound },
		&cache.Options{Prefix: prefix, Local: &cache.LocalOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for !l.LocalStats().Up {
		if time.Now().After(deadline) {
			t.Fatal("the tier's stream never came up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := prefix + "user#2:"

	var r healthReport
	cachectlJSON(t, &r, "health", "-pings", "1")
	var g *localStreamGroup
	for i := range r.LocalStreams {
		if r.LocalStreams[i].Prefix == want {
			g = &r.LocalStreams[i]
		}
	}
	if g == nil {
		t.Fatalf("no stream of prefix %q in %+v", want, r.LocalStreams)
	}
	if g.Streams != 1 || g.Hosts != 1 || g.OldestSeconds < g.NewestSeconds || g.MaxOmem < 0 || g.TotalOmem < g.MaxOmem {
		t.Errorf("stream group %+v", *g)
	}
	if r.PubsubLimitHard == 0 && r.PubsubLimitSoft == 0 {
		t.Logf("no pub/sub output-buffer limit on this server")
	}
	out, errOut, code := cachectl(t, "health", "-pings", "1")
	if code != exitOK || !strings.Contains(out, "tier streams:") || !strings.Contains(out, "  "+want+": 1 streams from 1 hosts") {
		t.Errorf("health: exit %d\n%s%s", code, out, errOut)
	}
}

func TestStreamWarnings(t *testing.T) {
	hard, soft := pubsubLimit("normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60")
	if hard != 32<<20 || soft != 8<<20 {
		t.Fatalf("pubsubLimit: %d %d", hard, soft)
	}
	if h, s := pubsubLimit("normal 0 0 0 pubsub 32mb 8mb 60"); h != 32<<20 || s != 8<<20 {
		t.Fatalf("pubsubLimit with units: %d %d", h, s)
	}
	groups := []localStreamGroup{{Prefix: "app:user#2:", MaxOmem: 1 << 20}, {Prefix: "app:order#2:", MaxOmem: 5 << 20}}
	ws := streamWarnings(groups, hard, soft)
	if len(ws) != 1 || !strings.Contains(ws[0], `"app:order#2:"`) || !strings.Contains(ws[0], "soft limit") {
		t.Errorf("warnings %q", ws)
	}
	if ws := streamWarnings(groups, 0, 0); ws != nil {
		t.Errorf("no limit: warnings %q", ws)
	}
	if ws := streamWarnings(groups, 8<<20, 0); len(ws) != 1 || !strings.Contains(ws[0], "hard limit") {
		t.Errorf("hard limit only: warnings %q", ws)
	}
}
