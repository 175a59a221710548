package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// These tests need a real Redis and MySQL/MariaDB: CACHE_REDIS_ADDR
// (default 127.0.0.1:6379) and CACHE_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test). When one cannot be reached they skip,
// except under CI (CI set) or with CACHE_REQUIRE_SERVERS=1, where they fail.

// budget bounds each test, -race included.
const budget = 10 * time.Second

func TestRun(t *testing.T) {
	db, rdb, table, prefix := servers(t)
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	start := time.Now()
	var out strings.Builder
	rep, err := run(ctx, &out, db, rdb, table, prefix)
	t.Log("\n" + out.String())
	require.NoError(t, err)
	require.Less(t, time.Since(start), budget)

	require.Equal(t, unknownScans, rep.Unknown.NotFound)
	require.LessOrEqual(t, rep.Unknown.Reads, int64(1+rep.Unknown.FailedOpen), "%+v", rep.Unknown)
	require.Equal(t, burstScans, rep.Burst.OK)
	require.Equal(t, burstScans, rep.Burst.Valid)
	// One read for the burst, and at most one more per Redis call that
	// failed or ran out of its budget (fail-open) on a busy machine.
	require.LessOrEqual(t, rep.Burst.Reads, int64(1+rep.Burst.FailedOpen), "%+v", rep.Burst)
	for _, r := range []RaceResult{rep.Race, rep.WarmRace} {
		require.Zero(t, r.ValidAfter)
		require.Zero(t, r.Failed)
		require.Positive(t, r.After)
		require.True(t, r.Revoked.Revoked)
	}
	require.Equal(t, http.StatusNotFound, rep.Issue.CodeBefore)
	require.Equal(t, "valid", rep.Issue.StatusA)
	require.Equal(t, "valid", rep.Issue.StatusB)

	// run cleaned up after itself.
	var n int
	require.NoError(t, db.QueryRowContext(t.Context(),
		"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", table).Scan(&n))
	require.Zero(t, n, "table dropped")
	keys, _, err := rdb.Scan(t.Context(), 0, prefix+"*", 1000).Result()
	require.NoError(t, err)
	require.Empty(t, keys, "keys deleted")
}

// newTestScenario starts the two instances on a fresh table and prefix.
func newTestScenario(t *testing.T) *scenario {
	t.Helper()
	db, rdb, table, prefix := servers(t)
	store, err := NewStore(db, table)
	require.NoError(t, err)
	var out strings.Builder
	s, err := newScenario(t.Context(), &out, store, rdb, prefix)
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		t.Log("\n" + out.String())
	})
	return s
}

// timed returns a context bounded by budget and checks, at the end of the
// test, that the test stayed within it.
func timed(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	start := time.Now()
	t.Cleanup(func() {
		cancel()
		if d := time.Since(start); d >= budget {
			t.Errorf("took %v, more than %v", d, budget)
		}
	})
	return ctx
}

// An unknown id costs one database read however often it is scanned, and
// answers 404 each time, on both instances.
func TestUnknownIDIsCachedNegatively(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	const n = 50
	r, err := s.unknownID(ctx, "no-such-cert", n)
	require.NoError(t, err)
	require.Equal(t, n, r.NotFound, "404 every time")
	require.EqualValues(t, 1, r.Reads, "one database read for %d scans", n)
	require.EqualValues(t, n-1, r.NegativeHits)
	loads := s.a.Stats().Loads + s.b.Stats().Loads
	require.EqualValues(t, 1, loads)

	// Ids that cannot be credentials never reach Redis or the database.
	reads := s.store.Reads()
	for _, id := range []string{strings.Repeat("x", 65), "a%20b", "%2F..%2Fetc"} {
		code, _, err := s.scan(ctx, s.urlA, id)
		require.NoError(t, err)
		require.Equal(t, http.StatusNotFound, code, id)
	}
	require.Equal(t, reads, s.store.Reads())
}

// A scan that starts after Revoke returned never shows the credential
// valid, on either instance, while loads that read it as valid before the
// revocation committed are still in flight.
func TestRevokedNeverShowsValidAfterRevoke(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	rounds := []struct {
		id   string
		cold bool
	}{{"cert-0001", true}, {"cert-0002", false}, {"cert-0003", true}, {"cert-0004", false}}
	for round, rd := range rounds {
		id := rd.id
		slow := time.Duration(0)
		if rd.cold {
			slow = raceSlowRead
		}
		r, err := s.revocationRace(ctx, id, rd.cold, raceScanners, slow, 100*time.Millisecond)
		require.NoError(t, err, "round %d", round)
		require.Zero(t, r.ValidAfter, "round %d: scans started after Revoke returned showed valid", round)
		require.Zero(t, r.Failed)
		require.Positive(t, r.Before, "round %d: no scan raced the revocation", round)
		require.Positive(t, r.After)
		require.True(t, r.Revoked.Revoked)
		require.EqualValues(t, 2, r.Revoked.Version)

		// The database agrees, and so does every instance afterwards.
		c, err := s.store.ByID(ctx, id)
		require.NoError(t, err)
		require.Equal(t, r.Revoked, c)
		for _, base := range []string{s.urlA, s.urlB} {
			code, status, err := s.scan(ctx, base, id)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, "revoked", status)
		}
	}
	// Revoking an unknown credential fails in MySQL and caches nothing.
	_, err := s.a.Revoke(ctx, "cert-9999")
	require.ErrorIs(t, err, sql.ErrNoRows)
	require.Zero(t, s.a.Stats().RedisErrors+s.b.Stats().RedisErrors)
}

// 800 concurrent scans of one cold credential: one database read, 800 × 200.
func TestBurstOfScansCostsOneRead(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	for round := range 2 { // the second burst starts cold again (Forget)
		loads0 := s.a.Stats().Loads
		r, err := s.burst(ctx, "cert-0004", burstScans)
		require.NoError(t, err)
		require.Equal(t, burstScans, r.OK, "round %d", round)
		require.Equal(t, burstScans, r.Valid, "round %d", round)
		require.Zero(t, r.Failed)
		require.EqualValues(t, 1, r.Reads, "round %d: database reads", round)
		require.EqualValues(t, 1, s.a.Stats().Loads-loads0, "round %d: loads", round)
	}
}

// A scan before a credential is issued caches "not found"; Issue (through
// WriteThrough) replaces it at once, on both instances.
func TestIssueReplacesNegativeEntry(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	r, err := s.issueAfterScan(ctx, "cert-0100", "Barbara Liskov")
	require.NoError(t, err)
	require.Equal(t, IssueResult{CodeBefore: 404, CodeAfter: 200, StatusA: "valid", StatusB: "valid"}, r)
}

func TestResponse(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	get := func(path string) *http.Response {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.urlA+path, nil)
		require.NoError(t, err)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := get("/verify/cert-0003")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, map[string]any{"id": "cert-0003", "holder": "Grace Hopper", "status": "valid"}, body)

	resp = get("/verify/cert-4040")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.JSONEq(t, `{"error":"unknown credential"}`, string(b))

	// Only GET: the public handler has no way to change anything.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.urlA+"/verify/cert-0003", nil)
	require.NoError(t, err)
	resp, err = s.client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// Verify answers unknown ids with cache.ErrNotFound.
	_, err = s.a.Verify(ctx, "cert-4040")
	require.ErrorIs(t, err, cache.ErrNotFound)
}

func TestBadTableName(t *testing.T) {
	_, err := NewStore(nil, "credentials; DROP TABLE users")
	require.Error(t, err)
}

func TestAdminRevoke(t *testing.T) {
	s := newTestScenario(t)
	ctx := timed(t)
	srv := httptest.NewServer(s.a.adminHandler())
	defer srv.Close()
	post := func(id string) int {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/admin/revoke/"+id, nil)
		require.NoError(t, err)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	code, status, err := s.scan(ctx, srv.URL, "cert-0001")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "valid", status)
	require.Equal(t, http.StatusOK, post("cert-0001"))
	require.Equal(t, http.StatusNotFound, post("cert-9999"))
	_, status, err = s.scan(ctx, s.urlB, "cert-0001")
	require.NoError(t, err)
	require.Equal(t, "revoked", status)
}

// servers returns connections to the real servers, a fresh table name
// (dropped at the end) and a fresh Redis key prefix (its keys deleted at
// the end).
func servers(t *testing.T) (*sql.DB, *redis.Client, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	rdb := newRedisClient(testenv.RedisAddr())
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

	table, prefix := uniqueNames()
	store, err := NewStore(db, table)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := cleanup(context.Background(), store, rdb, prefix); err != nil {
			t.Error(err)
		}
	})
	return db, rdb, table, prefix
}

func unreachable(t *testing.T, what string, err error) {
	t.Helper()
	testenv.Unreachable(t, what, err)
}
