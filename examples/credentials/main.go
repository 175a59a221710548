// Command credentials is a public verification endpoint for certificate QR
// scans, with a cache.Loader in front of MySQL.
//
// A printed certificate carries a QR code for GET /verify/{id}; anyone may
// scan it, so the endpoint sees bursts (a conference hall scanning one
// badge), scans of ids that do not exist (typos, forgeries, bots), and must
// never show a revoked credential as valid. The example shows how the cache
// handles each:
//
//   - unknown ids are cached negatively: the first scan of an unknown id
//     costs one database read, the following ones are answered from Redis
//     (404 each time) until Options.NegativeTTL;
//   - revocation goes through Loader.WriteThrough (UPDATE revoked = 1,
//     version = version + 1 in a transaction, re-read, commit, then the
//     committed row goes to Redis), so a scan that starts after Revoke
//     returned sees "revoked" — on every instance, even while a load that
//     read the row before the revocation is still in flight;
//   - a burst of concurrent scans of one cold credential costs one database
//     read (per-key singleflight in the process, a lease across processes).
//
// Without -addr it runs a scripted scenario against httptest servers (two
// instances of the service sharing Redis, as behind a load balancer) and
// prints what happened:
//
//	go run ./examples/credentials -dsn 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379
//
// With -addr it serves the endpoint on that address until interrupted:
//
//	go run ./examples/credentials -addr 127.0.0.1:8080
//	curl -s 127.0.0.1:8080/verify/cert-0001
//	curl -s -X POST 127.0.0.1:8080/admin/revoke/cert-0001   # demo only: no authentication
//
// Either way it creates a uniquely named table, uses a unique Redis key
// prefix, and drops the table and deletes the keys (SCAN + DEL of that
// prefix only) at the end.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// Credential is one row of the credentials table.
type Credential struct {
	ID      string `json:"id"`
	Holder  string `json:"holder"`
	Revoked bool   `json:"revoked"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned with the row's version column,
// read in the same SELECT as the rest of the row: the cache never replaces
// a revoked credential (newer version) with the valid one a slow load read
// before the revocation.
func (c Credential) CacheVersion() int64 { return c.Version }

// Status is what a scan shows: "valid" or "revoked".
func (c Credential) Status() string {
	if c.Revoked {
		return "revoked"
	}
	return "valid"
}

// Store reads and writes credentials in MySQL. It knows nothing of the
// cache. It counts its reads by id, so the example can show how many
// scans reached the database.
type Store struct {
	db    *sql.DB
	table string
	reads atomic.Int64
	// readDelay (nanoseconds) is slept after each read by id, before it
	// returns: a slow database, so that the revocation race has loads in
	// flight that read "valid" before the revocation committed and try to
	// fill Redis after it.
	readDelay atomic.Int64
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewStore returns a store of the credentials in table.
func NewStore(db *sql.DB, table string) (*Store, error) {
	// The table name is spliced into the SQL, so only plain names are allowed.
	if !tableName.MatchString(table) {
		return nil, fmt.Errorf("invalid table name %q", table)
	}
	return &Store{db: db, table: table}, nil
}

// Create creates the table.
func (s *Store) Create(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, `CREATE TABLE `+s.table+` (
		id      VARCHAR(64)  NOT NULL PRIMARY KEY,
		holder  VARCHAR(255) NOT NULL,
		revoked TINYINT(1)   NOT NULL DEFAULT 0,
		version BIGINT       NOT NULL DEFAULT 1
	)`)
	if err != nil {
		return fmt.Errorf("create table %s: %w", s.table, err)
	}
	return nil
}

// Drop drops the table if it exists.
func (s *Store) Drop(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `DROP TABLE IF EXISTS `+s.table); err != nil {
		return fmt.Errorf("drop table %s: %w", s.table, err)
	}
	return nil
}

// Seed inserts credentials behind the cache's back (a bulk import): the
// caller must invalidate their ids if the cache may have seen them.
func (s *Store) Seed(ctx context.Context, creds map[string]string) error {
	for _, id := range slices.Sorted(maps.Keys(creds)) {
		holder := creds[id]
		if _, err := s.db.ExecContext(ctx,
			`INSERT INTO `+s.table+` (id, holder) VALUES (?, ?)`, id, holder); err != nil {
			return fmt.Errorf("seed %s: %w", id, err)
		}
	}
	return nil
}

// ByID returns the credential with id. A missing row is sql.ErrNoRows,
// which the cache turns into cache.ErrNotFound (and caches negatively).
func (s *Store) ByID(ctx context.Context, id string) (Credential, error) {
	c, err := scanCredential(s.db.QueryRowContext(ctx,
		`SELECT id, holder, revoked, version FROM `+s.table+` WHERE id = ?`, id))
	s.reads.Add(1)
	if d := time.Duration(s.readDelay.Load()); d > 0 {
		time.Sleep(d)
	}
	return c, err
}

// Reads returns how many times ByID read the database.
func (s *Store) Reads() int64 { return s.reads.Load() }

// SetReadDelay makes every ByID take d longer (0: no delay).
func (s *Store) SetReadDelay(d time.Duration) { s.readDelay.Store(int64(d)) }

// Issue inserts a new, valid credential and returns the row as committed.
func (s *Store) Issue(ctx context.Context, id, holder string) (Credential, error) {
	return s.inTx(ctx, id, `INSERT INTO `+s.table+` (id, holder) VALUES (?, ?)`, id, holder)
}

// Revoke marks the credential revoked, bumps its version and returns the
// row as committed. A missing id fails with sql.ErrNoRows. Revoking twice
// is harmless (the version moves on, the status stays revoked).
func (s *Store) Revoke(ctx context.Context, id string) (Credential, error) {
	return s.inTx(ctx, id, `UPDATE `+s.table+` SET revoked = 1, version = version + 1 WHERE id = ?`, id)
}

// inTx runs the statement and re-reads the row in one transaction, so the
// row returned is the row written, version included.
func (s *Store) inTx(ctx context.Context, id, stmt string, args ...any) (Credential, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Credential{}, err
	}
	defer tx.Rollback() // a no-op after Commit
	if _, err := tx.ExecContext(ctx, stmt, args...); err != nil {
		return Credential{}, err
	}
	c, err := scanCredential(tx.QueryRowContext(ctx,
		`SELECT id, holder, revoked, version FROM `+s.table+` WHERE id = ?`, id))
	if err != nil {
		return Credential{}, err
	}
	if err := tx.Commit(); err != nil {
		return Credential{}, err
	}
	return c, nil
}

func scanCredential(row *sql.Row) (Credential, error) {
	var c Credential
	err := row.Scan(&c.ID, &c.Holder, &c.Revoked, &c.Version)
	return c, err
}

// Verifier is one instance of the verification service: the Store behind
// a Loader named "credential". Several instances (processes) sharing one
// Redis and the same Options.Prefix share their cache entries.
type Verifier struct {
	store *Store
	cache *cache.Loader[Credential]
}

// NewVerifier wraps store with a Loader on rdb.
func NewVerifier(store *Store, rdb redis.UniversalClient, opts *cache.Options) (*Verifier, error) {
	l, err := cache.New(rdb, "credential", store.ByID, opts)
	if err != nil {
		return nil, err
	}
	return &Verifier{store: store, cache: l}, nil
}

// validID is what a credential id looks like. Anything else is answered
// 404 without touching Redis or the database: junk ids must not fill Redis
// with negative entries.
var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Verify returns the credential with id, from Redis when it can. An
// unknown id is an error matching cache.ErrNotFound.
func (v *Verifier) Verify(ctx context.Context, id string) (Credential, error) {
	if !validID.MatchString(id) {
		return Credential{}, cache.ErrNotFound
	}
	return v.cache.Get(ctx, id)
}

// Issue inserts a credential and stores it in Redis. This replaces a
// negative entry left by an earlier scan of the id, so a credential scanned
// before it was issued does not stay "unknown" for NegativeTTL.
func (v *Verifier) Issue(ctx context.Context, id, holder string) (Credential, error) {
	if !validID.MatchString(id) {
		return Credential{}, fmt.Errorf("invalid credential id %q", id)
	}
	return v.cache.WriteThrough(ctx, id, func(ctx context.Context) (Credential, error) {
		return v.store.Issue(ctx, id, holder)
	})
}

// Revoke revokes the credential in MySQL and then stores the revoked row in
// Redis. Once it has returned, no scan that starts afterwards — on this or
// any other instance sharing the Redis — shows the credential valid.
// Once the commit succeeded it returns no Redis error (see
// Loader.WriteThrough for what happens when Redis is down).
func (v *Verifier) Revoke(ctx context.Context, id string) (Credential, error) {
	if !validID.MatchString(id) {
		return Credential{}, sql.ErrNoRows
	}
	return v.cache.WriteThrough(ctx, id, func(ctx context.Context) (Credential, error) {
		return v.store.Revoke(ctx, id)
	})
}

// Forget drops ids from Redis; call it after writes made behind the
// cache's back (Store.Seed).
func (v *Verifier) Forget(ctx context.Context, ids ...string) error {
	return v.cache.Invalidate(ctx, ids...)
}

// Stats returns the cache's counters.
func (v *Verifier) Stats() cache.Stats { return v.cache.Stats() }

// Close stops the cache's background work.
func (v *Verifier) Close() error { return v.cache.Close() }

// VerifyResponse is the body of a 200 answer of GET /verify/{id}.
type VerifyResponse struct {
	ID     string `json:"id"`
	Holder string `json:"holder"`
	Status string `json:"status"` // valid or revoked
}

// ErrorResponse is the body of the other answers.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Handler returns the public endpoint: GET /verify/{id}.
func (v *Verifier) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /verify/{id}", v.serveVerify)
	return mux
}

func (v *Verifier) serveVerify(w http.ResponseWriter, r *http.Request) {
	// The answer changes on revocation: no browser, proxy or CDN may keep it.
	w.Header().Set("Cache-Control", "no-store")
	c, err := v.Verify(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, cache.ErrNotFound):
		writeJSON(w, http.StatusNotFound, ErrorResponse{Error: "unknown credential"})
	case err != nil:
		// The database failed (or the client left): never guess "valid".
		log.Printf("verify %q: %v", r.PathValue("id"), err)
		writeJSON(w, http.StatusServiceUnavailable, ErrorResponse{Error: "verification unavailable, try again"})
	default:
		writeJSON(w, http.StatusOK, VerifyResponse{ID: c.ID, Holder: c.Holder, Status: c.Status()})
	}
}

// adminHandler adds POST /admin/revoke/{id} to the public handler, for -addr
// mode. DEMO ONLY: a real service puts revocation behind authentication, on
// another listener.
func (v *Verifier) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /verify/{id}", v.Handler())
	mux.HandleFunc("POST /admin/revoke/{id}", func(w http.ResponseWriter, r *http.Request) {
		c, err := v.Revoke(r.Context(), r.PathValue("id"))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			writeJSON(w, http.StatusNotFound, ErrorResponse{Error: "unknown credential"})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, ErrorResponse{Error: err.Error()})
		default:
			writeJSON(w, http.StatusOK, VerifyResponse{ID: c.ID, Holder: c.Holder, Status: c.Status()})
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// newRedisClient returns the go-redis client the Loaders use.
func newRedisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: addr,
		// Lets Options.RedisTimeout bound every call; cache.New refuses a
		// client without it.
		ContextTimeoutEnabled: true,
		// The scenario sends 800 concurrent scans. Gets of one key share
		// their Redis read, but misses, lease requests, fills and the Gets
		// of other keys each need a connection, and waiting for one counts
		// against RedisTimeout: a Get that runs out of it answers from the
		// database — an extra read in the middle of a burst. The default
		// (10 × GOMAXPROCS) is small on a small machine.
		PoolSize: 200,
	})
}

// cacheOptions are the Loader options of every instance.
func cacheOptions(prefix string) *cache.Options {
	return &cache.Options{
		Prefix: prefix,
		TTL:    10 * time.Minute,
		// Unknown ids: one database read per id per 30 s, whatever the
		// scan rate. Issue replaces the negative entry at once.
		NegativeTTL: 30 * time.Second,
		// How long one Get waits for Redis in all before it answers from
		// MySQL instead (fail-open). The default, 50 ms, is spent by the
		// queue itself when 800 scans arrive at once on a small machine
		// (CPU, not Redis, is the bottleneck then, and more so under the
		// race detector): the Gets that run out of it each read the
		// database, which is what the burst must not do. A PK lookup in
		// MySQL is not cheaper than waiting a little longer for Redis.
		RedisTimeout: 500 * time.Millisecond,
	}
}

// deleteKeys deletes the Redis keys under prefix: SCAN + DEL of that prefix
// only (never FLUSHALL: the Redis may be shared).
func deleteKeys(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	iter := rdb.Scan(ctx, 0, prefix+"*", 100).Iterator()
	for iter.Next(ctx) {
		if err := rdb.Del(ctx, iter.Val()).Err(); err != nil {
			return fmt.Errorf("delete %s: %w", iter.Val(), err)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scan %s*: %w", prefix, err)
	}
	return nil
}

// uniqueNames returns a fresh table name and Redis key prefix.
func uniqueNames() (table, prefix string) {
	var b [6]byte
	_, _ = rand.Read(b[:]) // never fails
	id := hex.EncodeToString(b[:])
	return "credentials_example_" + id, "credentials-example:" + id + ":"
}

// The seeded credentials.
var seed = map[string]string{
	"cert-0001": "Ada Lovelace",
	"cert-0002": "Alan Turing",
	"cert-0003": "Grace Hopper",
	"cert-0004": "Edsger Dijkstra",
}

// scenario is the service deployed twice (instances A and B, each its own
// Loader, so its own singleflight, sharing Redis) behind httptest servers,
// and a client scanning them.
type scenario struct {
	w      io.Writer
	store  *Store
	a, b   *Verifier
	urlA   string
	urlB   string
	client *http.Client
	close  func()
}

// newScenario creates the store's table, seeds it, and starts the two
// instances with keys under prefix. Close stops them; it neither drops the
// table nor deletes the keys (see cleanup).
func newScenario(ctx context.Context, w io.Writer, store *Store, rdb redis.UniversalClient, prefix string) (*scenario, error) {
	if err := store.Create(ctx); err != nil {
		return nil, err
	}
	if err := store.Seed(ctx, seed); err != nil {
		return nil, err
	}
	a, err := NewVerifier(store, rdb, cacheOptions(prefix))
	if err != nil {
		return nil, err
	}
	b, err := NewVerifier(store, rdb, cacheOptions(prefix))
	if err != nil {
		a.Close()
		return nil, err
	}
	srvA := httptest.NewServer(a.Handler())
	srvB := httptest.NewServer(b.Handler())
	tr := &http.Transport{
		// Up to 800 scans at once: keep their connections for the next ones.
		MaxIdleConns:        1000,
		MaxIdleConnsPerHost: 1000,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	s := &scenario{
		w: w, store: store, a: a, b: b, urlA: srvA.URL, urlB: srvB.URL,
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
	s.close = func() {
		tr.CloseIdleConnections()
		srvA.Close()
		srvB.Close()
		a.Close()
		b.Close()
	}
	return s, nil
}

// Close stops the servers and the Loaders.
func (s *scenario) Close() { s.close() }

// scan is one QR scan: GET base/verify/id. It returns the HTTP status and,
// for 200, the status shown ("valid" or "revoked").
func (s *scenario) scan(ctx context.Context, base, id string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/verify/"+id, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, "", nil
	}
	var body VerifyResponse
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return resp.StatusCode, "", err
	}
	if body.ID != id {
		return resp.StatusCode, body.Status, fmt.Errorf("scan of %q answered for %q", id, body.ID)
	}
	return resp.StatusCode, body.Status, nil
}

// UnknownResult is what n scans of an unknown id did.
type UnknownResult struct {
	Scans        int
	NotFound     int   // 404 answers
	Reads        int64 // database reads they caused
	NegativeHits uint64
	FailedOpen   uint64 // Redis calls that failed or ran out of budget (see BurstResult)
}

// unknownID scans an id that does not exist n times, one after the other,
// alternating between the instances.
func (s *scenario) unknownID(ctx context.Context, id string, n int) (UnknownResult, error) {
	reads0, neg0 := s.store.Reads(), s.a.Stats().NegativeHits+s.b.Stats().NegativeHits
	failed0 := failedOpen(s.a.Stats()) + failedOpen(s.b.Stats())
	r := UnknownResult{Scans: n}
	for i := range n {
		code, _, err := s.scan(ctx, s.pick(i), id)
		if err != nil {
			return r, err
		}
		if code == http.StatusNotFound {
			r.NotFound++
		}
	}
	r.Reads = s.store.Reads() - reads0
	r.NegativeHits = s.a.Stats().NegativeHits + s.b.Stats().NegativeHits - neg0
	r.FailedOpen = failedOpen(s.a.Stats()) + failedOpen(s.b.Stats()) - failed0
	fmt.Fprintf(s.w, "unknown id %q: %d scans -> %d × 404, %d database read(s), %d negative hits\n",
		id, r.Scans, r.NotFound, r.Reads, r.NegativeHits)
	return r, nil
}

// failedOpen counts the Redis calls of st that failed or were not made
// because their budget was spent.
func failedOpen(st cache.Stats) uint64 { return st.RedisErrors + st.BudgetSpent }

func (s *scenario) pick(i int) string {
	if i%2 == 0 {
		return s.urlA
	}
	return s.urlB
}

// BurstResult is what a burst of concurrent scans of one cold credential did.
type BurstResult struct {
	Scans  int
	OK     int   // 200 answers
	Valid  int   // ... showing "valid"
	Failed int   // transport errors and other statuses
	Reads  int64 // database reads they caused
	// FailedOpen counts the Redis calls that failed or were not made (the
	// scan's Redis budget spent): each may explain one more read.
	FailedOpen uint64
	Coalesced  uint64
	Hits       uint64
	Elapsed    time.Duration
}

// burst sends n scans of id to instance A at once.
func (s *scenario) burst(ctx context.Context, id string, n int) (BurstResult, error) {
	if err := s.a.Forget(ctx, id); err != nil { // cold, even if scanned before
		return BurstResult{}, err
	}
	reads0, st0 := s.store.Reads(), s.a.Stats()
	var ok, valid, failed atomic.Int64
	var firstErr error
	var once sync.Once
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			code, status, err := s.scan(ctx, s.urlA, id)
			switch {
			case err != nil:
				failed.Add(1)
				once.Do(func() { firstErr = err })
			case code == http.StatusOK:
				ok.Add(1)
				if status == "valid" {
					valid.Add(1)
				}
			default:
				failed.Add(1)
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	st := s.a.Stats()
	r := BurstResult{
		Scans: n, OK: int(ok.Load()), Valid: int(valid.Load()), Failed: int(failed.Load()),
		Reads:      s.store.Reads() - reads0,
		FailedOpen: failedOpen(st) - failedOpen(st0),
		Coalesced:  st.Coalesced - st0.Coalesced,
		Hits:       st.Hits - st0.Hits,
		Elapsed:    time.Since(t0),
	}
	fmt.Fprintf(s.w, "burst of %d concurrent scans of cold %q: %d × 200 (%d valid), %d failed, %d database read(s) "+
		"(%d waited on the load, %d Redis hits) in %v\n",
		r.Scans, id, r.OK, r.Valid, r.Failed, r.Reads, r.Coalesced, r.Hits, r.Elapsed.Round(time.Millisecond))
	if r.FailedOpen > 0 {
		fmt.Fprintf(s.w, "    %d Redis call(s) failed or ran out of their budget on the loaded machine; those scans read the database themselves\n", r.FailedOpen)
	}
	if firstErr != nil {
		return r, fmt.Errorf("burst: %w", firstErr)
	}
	return r, nil
}

// RaceResult is what scans racing a revocation saw.
type RaceResult struct {
	Before       int // scans started before Revoke returned
	ValidBefore  int // ... that showed valid (allowed: they may have been answered before the commit)
	After        int // scans started after Revoke returned
	ValidAfter   int // ... that showed valid: must be 0
	Failed       int // transport errors and statuses other than 200
	Revoked      Credential
	StaleRefused uint64 // fills refused because the entry had moved on (stale_set_prevented)
}

// revocationRace scans id from several goroutines, against both instances,
// while instance A revokes it. Every scan notes, before it is sent, whether
// Revoke had returned; none of those that started afterwards may show
// "valid".
//
// With cold, the credential starts uncached and the database is slowed
// down by slow: Revoke runs as soon as the first load has read the row as
// valid, so that load is still in flight when Revoke returns and tries to
// fill Redis afterwards (the cache refuses it). Otherwise the credential
// is cached as valid when the scans start, and Revoke replaces the entry
// while they hit it.
func (s *scenario) revocationRace(ctx context.Context, id string, cold bool, scanners int, slow, after time.Duration) (RaceResult, error) {
	if cold {
		if err := s.a.Forget(ctx, id); err != nil { // the first scans load
			return RaceResult{}, err
		}
	} else {
		for _, base := range []string{s.urlA, s.urlB} {
			if _, _, err := s.scan(ctx, base, id); err != nil {
				return RaceResult{}, err
			}
		}
	}
	s.store.SetReadDelay(slow)
	defer s.store.SetReadDelay(0)
	st0 := s.a.Stats().StaleSetsPrevented + s.b.Stats().StaleSetsPrevented
	reads0 := s.store.Reads()

	var revoked atomic.Bool // set once Revoke has returned
	stop := make(chan struct{})
	var mu sync.Mutex
	var r RaceResult
	var firstErr error
	var wg sync.WaitGroup
	for g := range scanners {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				afterRevoke := revoked.Load() // before the request is sent
				code, status, err := s.scan(ctx, s.pick(g+i), id)
				mu.Lock()
				switch {
				case err != nil || code != http.StatusOK:
					r.Failed++
					if firstErr == nil {
						firstErr = fmt.Errorf("scan: status %d: %v", code, err)
					}
				case afterRevoke:
					r.After++
					if status == "valid" {
						r.ValidAfter++
					}
				default:
					r.Before++
					if status == "valid" {
						r.ValidBefore++
					}
				}
				mu.Unlock()
			}
		})
	}
	if cold {
		// Revoke while a load that read the row as valid is still running.
		for s.store.Reads() == reads0 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
	} else {
		time.Sleep(after / 4) // let the hits flow
	}
	c, err := s.a.Revoke(ctx, id)
	revoked.Store(true)
	if err == nil {
		select {
		case <-time.After(after):
		case <-ctx.Done():
		}
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return r, fmt.Errorf("revoke: %w", err)
	}
	r.Revoked = c
	// The slow loads have all returned by now (they are shorter than after).
	r.StaleRefused = s.a.Stats().StaleSetsPrevented + s.b.Stats().StaleSetsPrevented - st0
	what := "cached as valid"
	if cold {
		what = fmt.Sprintf("cold, database slowed by %v", slow)
	}
	fmt.Fprintf(s.w, "revocation of %q (v%d, %s) racing %d scanners:\n"+
		"    %d scans started before Revoke returned (%d showed valid, allowed)\n"+
		"    %d scans started after it (%d showed valid), %d failed; %d stale fill(s) refused\n",
		id, c.Version, what, scanners, r.Before, r.ValidBefore, r.After, r.ValidAfter, r.Failed, r.StaleRefused)
	if firstErr != nil {
		return r, firstErr
	}
	return r, nil
}

// IssueResult is what scans before and after issuing a credential saw.
type IssueResult struct {
	CodeBefore int    // 404: unknown, now cached negatively
	CodeAfter  int    // 200
	StatusA    string // what each instance shows right after Issue: valid
	StatusB    string
}

// issueAfterScan scans an id that does not exist yet (caching "not found"),
// issues it through WriteThrough on instance A, and scans it again on both
// instances: the negative entry is replaced at once.
func (s *scenario) issueAfterScan(ctx context.Context, id, holder string) (IssueResult, error) {
	var r IssueResult
	var err error
	if r.CodeBefore, _, err = s.scan(ctx, s.urlB, id); err != nil {
		return r, err
	}
	if _, err := s.a.Issue(ctx, id, holder); err != nil {
		return r, fmt.Errorf("issue: %w", err)
	}
	if r.CodeAfter, r.StatusA, err = s.scan(ctx, s.urlA, id); err != nil {
		return r, err
	}
	if _, r.StatusB, err = s.scan(ctx, s.urlB, id); err != nil {
		return r, err
	}
	fmt.Fprintf(s.w, "issue %q after a scan answered %d: next scans answer %d, %s on A, %s on B\n",
		id, r.CodeBefore, r.CodeAfter, r.StatusA, r.StatusB)
	return r, nil
}

// Report is what run observed.
type Report struct {
	Unknown  UnknownResult
	Burst    BurstResult
	Race     RaceResult // cold, with a load in flight
	WarmRace RaceResult // cached as valid
	Issue    IssueResult
	StatsA   cache.Stats
	StatsB   cache.Stats
	Elapsed  time.Duration
}

// The scenario's sizes.
const (
	unknownScans  = 20
	burstScans    = 800
	raceScanners  = 16
	raceSlowRead  = 30 * time.Millisecond
	raceAfterTime = 150 * time.Millisecond
)

// run creates table, walks through the scenario printing each step to w,
// and drops the table and deletes the keys under prefix at the end.
func run(ctx context.Context, w io.Writer, db *sql.DB, rdb redis.UniversalClient, table, prefix string) (rep Report, err error) {
	t0 := time.Now()
	store, err := NewStore(db, table)
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, cleanup(ctx, store, rdb, prefix)) }()
	s, err := newScenario(ctx, w, store, rdb, prefix)
	if err != nil {
		return rep, err
	}
	defer s.Close()
	fmt.Fprintf(w, "table %s, Redis prefix %q, instances A %s and B %s\n", table, prefix, s.urlA, s.urlB)

	if rep.Unknown, err = s.unknownID(ctx, "cert-9999", unknownScans); err != nil {
		return rep, err
	}
	if rep.Burst, err = s.burst(ctx, "cert-0001", burstScans); err != nil {
		return rep, err
	}
	if rep.Race, err = s.revocationRace(ctx, "cert-0002", true, raceScanners, raceSlowRead, raceAfterTime); err != nil {
		return rep, err
	}
	if rep.WarmRace, err = s.revocationRace(ctx, "cert-0003", false, raceScanners, 0, raceAfterTime); err != nil {
		return rep, err
	}
	if rep.Issue, err = s.issueAfterScan(ctx, "cert-0005", "Barbara Liskov"); err != nil {
		return rep, err
	}
	rep.StatsA, rep.StatsB = s.a.Stats(), s.b.Stats()
	rep.Elapsed = time.Since(t0)
	fmt.Fprintf(w, "instance A: %+v\n", rep.StatsA)
	fmt.Fprintf(w, "instance B: %+v\n", rep.StatsB)
	fmt.Fprintf(w, "database reads by id: %d in all; scenario took %v\n", s.store.Reads(), rep.Elapsed.Round(time.Millisecond))
	return rep, nil
}

// cleanup drops the store's table and deletes the Redis keys under prefix,
// even when ctx is done.
func cleanup(ctx context.Context, store *Store, rdb redis.UniversalClient, prefix string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return errors.Join(store.Drop(ctx), deleteKeys(ctx, rdb, prefix))
}

// serve serves instance A, with the demo admin route, on addr until ctx is
// done; then it drops the table and deletes the keys.
func serve(ctx context.Context, addr string, db *sql.DB, rdb redis.UniversalClient, table, prefix string) (err error) {
	store, err := NewStore(db, table)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cleanup(ctx, store, rdb, prefix)) }()
	if err := store.Create(ctx); err != nil {
		return err
	}
	if err := store.Seed(ctx, seed); err != nil {
		return err
	}
	v, err := NewVerifier(store, rdb, cacheOptions(prefix))
	if err != nil {
		return err
	}
	defer v.Close()
	srv := &http.Server{Addr: addr, Handler: v.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("serving on http://%s (table %s, Redis prefix %q); try:", ln.Addr(), table, prefix)
	for _, id := range slices.Sorted(maps.Keys(seed)) {
		log.Printf("  curl -s http://%s/verify/%s", ln.Addr(), id)
	}
	log.Printf("  curl -s http://%s/verify/cert-9999   # unknown: 404, cached negatively", ln.Addr())
	log.Printf("  curl -s -X POST http://%s/admin/revoke/cert-0001   # demo only", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Printf("shutting down: dropping table %s, deleting keys %s*", table, prefix)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

func main() {
	addr := flag.String("addr", "", "serve the endpoint on this address (default: run the scripted scenario and exit)")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN (go-sql-driver/mysql format)")
	flag.Parse()

	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rdb := newRedisClient(*redisAddr)
	defer rdb.Close()
	table, prefix := uniqueNames()

	if *addr != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serve(ctx, *addr, db, rdb, table, prefix); err != nil {
			log.Fatal(err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := run(ctx, os.Stdout, db, rdb, table, prefix); err != nil {
		log.Fatal(err)
	}
}
