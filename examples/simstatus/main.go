// Command simstatus is a SIM-status cache through a database migration.
//
// Carrier webhooks write the status of SIM cards, keyed
// {tenant}:{iccid}:status, through Loader.WriteThrough (UPDATE ... SET
// status = ?, version = version + 1 in a transaction, re-read, commit);
// billing, alerting and dashboard readers Get it concurrently. Then the
// SIMs move from the table sims to a new table sims_v2: the readers are
// switched to sims_v2 at once, while the webhooks dual-write both tables. For
// most SIMs the dual write is one transaction; for some, the write reaches
// sims_v2 through a copier that lags, and applies it only later, behind the
// cache's back. So the cache, filled from sims by the writes, silently
// disagrees with sims_v2, the source of truth after the cut-over.
//
// Loader.Reconcile against sims_v2 finds those entries and evicts them, and
// Stats().StaleEntriesFound counts them: each round of the window prints how
// many entries were stale. As the copier catches up the count falls; when a
// pass finds 0, the window is over.
//
// Note what switching the readers early costs: between a pass and the
// copier catching up, a reader of an evicted SIM gets the lagging row of
// sims_v2 (the tombstone keeps the newer version, so that row is not
// cached, and the next Get loads again). The counter says when the copy is
// safe to read from.
//
// Then, after the window, the old service (still running in a few pods)
// changes some SIMs with plain SQL on both tables — writes around the
// cache, as any migration job, support script or second service can make.
// The pass after the window finds those entries stale. With -relay, a
// cdc.Relay tails the binlog from before the window opens, with a rule on
// sims_v2: every write to it (dual writes, the copier's, the old service's)
// invalidates its SIM's key with the row's version as floor, and the pass
// after the window finds nothing. (Entries the cache holds ahead of a
// lagging sims_v2 are still found by the passes inside the window: the
// truth is behind, and no invalidation can make it catch up.)
//
// Run it against a MySQL or MariaDB and a Redis:
//
//	cd examples/simstatus
//	go run . -dsn 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379
//
// With -relay the server must be a MariaDB 10.5+ (the relay's flavor here,
// and the example waits for it by GTID) with a binary log: --log-bin
// --binlog-format=ROW --binlog-row-metadata=FULL, and the DSN's user needs
// REPLICATION SLAVE and BINLOG MONITOR (see cdc/README.md). The
// relay publishes its status: while it runs,
//
//	cachectl health -prefix simstatus-example:
//
// shows it.
//
// It creates two uniquely named tables and drops them at the end, and
// deletes the Redis keys under -prefix (and only those) before and after.
package main

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
)

// SIM is the status of one SIM card: a row of sims (or sims_v2).
type SIM struct {
	Tenant  string `json:"tenant"`
	ICCID   string `json:"iccid"`
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned with the row's version column.
// The backfill and the copier carry it over to sims_v2, so the versions of
// both tables count the same writes.
func (s SIM) CacheVersion() int64 { return s.Version }

// Key is the SIM's cache key (the Loader adds Prefix + "sim:").
func (s SIM) Key() string { return simKey(s.Tenant, s.ICCID) }

func simKey(tenant, iccid string) string { return tenant + ":" + iccid + ":status" }

func parseKey(key string) (tenant, iccid string, err error) {
	parts := strings.Split(key, ":")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] != "status" {
		return "", "", fmt.Errorf("bad SIM key %q: want {tenant}:{iccid}:status", key)
	}
	return parts[0], parts[1], nil
}

var statuses = []string{"activated", "suspended", "deactivated", "inventory"}

// config sizes a run. The zero value of a field selects its default.
type config struct {
	Prefix   string // Redis key prefix (required: its keys are deleted)
	Tenants  int    // default 4
	SIMs     int    // per tenant; default 25
	Webhooks int    // concurrent webhook workers; default 8
	Writes   int    // status changes before the migration; default 400
	Readers  int    // goroutines per reader (billing, alerting, dashboard); default 2
	Around   int    // after the window, every Around-th SIM is changed around the cache; default 5
	// RelayDSN, if set, runs a cdc.Relay on the binlog of the server it
	// names (the one db is a pool of) through the window and after it.
	RelayDSN string
	// RelayLogger receives the relay's messages.
	// default: slog.Default()
	RelayLogger *slog.Logger
}

func (c *config) defaults() {
	or := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	or(&c.Tenants, 4)
	or(&c.SIMs, 25)
	or(&c.Webhooks, 8)
	or(&c.Writes, 400)
	or(&c.Readers, 2)
	or(&c.Around, 5)
}

// round is one round of the migration window.
type round struct {
	Writes      int                   // webhook writes (one per SIM)
	Lagging     int                   // of which the copier applied late
	Reconcile   cache.ReconcileResult // the pass run before the copier caught up
	StaleFound  uint64                // Stats().StaleEntriesFound during the pass
	CaughtUp    int                   // rows the copier then applied
	Elapsed     time.Duration
	PassElapsed time.Duration
}

// result is what a run did, for the test.
type result struct {
	Tables       []string // the tables run created (and dropped)
	SIMs         int
	Writes       int                   // webhook writes before the migration
	Reads        map[string]int        // Gets per reader, whole run
	ReadErrors   int                   // Gets that returned an error
	Checked      int                   // Gets compared with sims after the webhooks
	Mismatches   int                   // of which differed from the row
	Rounds       []round               // the migration window
	Relay        bool                  // a relay tailed the binlog
	RelayStats   cdc.Stats             // the relay's, at the end
	RelayWait    time.Duration         // how long the relay took to apply the writes around the cache
	Around       int                   // SIMs changed around the cache after the window
	After        cache.ReconcileResult // the pass after the writes around the cache
	FinalChecked int                   // Gets compared with sims_v2 after the window
	FinalMisses  int                   // of which differed from the row
	TablesDiffer int                   // rows where sims and sims_v2 still differ
	Stats        cache.Stats
	Elapsed      time.Duration
}

// lagEvery says, per round of the window, which SIMs' writes reach sims_v2
// late: every n-th SIM (0: none). The copier catches up round by round.
var lagEvery = []int{3, 7, 0}

// run seeds the tables, runs the webhooks and readers, then the migration
// window, printing a narrative to w.
func run(ctx context.Context, w io.Writer, db *sql.DB, rdb redis.UniversalClient, cfg config) (res result, err error) {
	start := time.Now()
	cfg.defaults()
	if cfg.Prefix == "" {
		return res, errors.New("an empty -prefix would make the cleanup delete every key")
	}
	id := randomHex()
	oldT, newT := "sims_"+id, "sims_v2_"+id
	res.Tables = []string{oldT, newT}
	if err := createTables(ctx, db, oldT, newT); err != nil {
		return res, err
	}
	defer func() {
		// Not ctx: clean up even when the run was cancelled.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, derr := db.ExecContext(cctx, "DROP TABLE IF EXISTS "+oldT+", "+newT)
		err = errors.Join(err, derr, deletePrefix(cctx, rdb, cfg.Prefix))
	}()
	// Entries left by an earlier run under this prefix came from other
	// tables: start cold.
	if err := deletePrefix(ctx, rdb, cfg.Prefix); err != nil {
		return res, err
	}

	sims, err := seed(ctx, db, oldT, cfg)
	if err != nil {
		return res, err
	}
	res.SIMs = len(sims)
	keys := make([]string, len(sims))
	for i, s := range sims {
		keys[i] = s.Key()
	}

	// source is the table the readers load from: sims until the readers
	// are switched to sims_v2.
	var source atomic.Pointer[string]
	source.Store(&oldT)
	load := func(ctx context.Context, key string) (SIM, error) {
		tenant, iccid, err := parseKey(key)
		if err != nil {
			return SIM{}, err
		}
		return readSIM(ctx, db, *source.Load(), tenant, iccid)
	}
	status, err := cache.New(rdb, "sim", load, &cache.Options{Prefix: cfg.Prefix, TTL: 10 * time.Minute})
	if err != nil {
		return res, err
	}
	defer status.Close()

	fmt.Fprintf(w, "simstatus: %d tenants × %d SIMs in %s; cache keys %s\n",
		cfg.Tenants, cfg.SIMs, oldT, status.Key("{tenant}:{iccid}:status"))

	// Readers: billing, alerting and the dashboard Get random SIMs for the
	// whole run.
	rctx, stopReaders := context.WithCancel(ctx)
	var (
		readers    sync.WaitGroup
		readErrors atomic.Int64
		firstErr   atomic.Pointer[error]
		reads      sync.Map // reader → *atomic.Int64
	)
	for _, name := range []string{"billing", "alerting", "dashboard"} {
		n := new(atomic.Int64)
		reads.Store(name, n)
		for range cfg.Readers {
			readers.Go(func() {
				for rctx.Err() == nil {
					_, err := status.Get(rctx, keys[rand.IntN(len(keys))])
					if err != nil && rctx.Err() == nil {
						readErrors.Add(1)
						firstErr.CompareAndSwap(nil, &err)
					}
					n.Add(1)
					time.Sleep(200 * time.Microsecond)
				}
			})
		}
	}
	defer func() {
		stopReaders()
		readers.Wait()
		res.Reads = make(map[string]int)
		reads.Range(func(k, v any) bool {
			res.Reads[k.(string)] = int(v.(*atomic.Int64).Load())
			return true
		})
		res.ReadErrors = int(readErrors.Load())
		if p := firstErr.Load(); p != nil && err == nil {
			err = fmt.Errorf("a reader failed: %w", *p)
		}
		res.Stats = status.Stats()
		res.Elapsed = time.Since(start)
	}()

	// Before the migration: the webhooks write sims only.
	t0 := time.Now()
	before := status.Stats()
	var webhooks sync.WaitGroup
	var writeErr atomic.Pointer[error]
	next := atomic.Int64{}
	for range cfg.Webhooks {
		webhooks.Go(func() {
			for int(next.Add(1)) <= cfg.Writes {
				s := sims[rand.IntN(len(sims))]
				_, err := status.WriteThrough(ctx, s.Key(), func(ctx context.Context) (SIM, error) {
					return setStatus(ctx, db, oldT, s.Tenant, s.ICCID, statuses[rand.IntN(len(statuses))], "", nil)
				})
				if err != nil {
					writeErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	webhooks.Wait()
	if p := writeErr.Load(); p != nil {
		return res, fmt.Errorf("webhook: %w", *p)
	}
	res.Writes = cfg.Writes
	after := status.Stats()
	fmt.Fprintf(w, "before the migration: %d webhooks wrote %d status changes through WriteThrough in %v; readers Got %d times meanwhile (%.0f%% hits, %d errors)\n",
		cfg.Webhooks, cfg.Writes, time.Since(t0).Round(time.Millisecond),
		(after.Hits+after.Misses)-(before.Hits+before.Misses),
		hitRate(before, after), readErrors.Load())

	res.Checked, res.Mismatches, err = compare(ctx, status, db, oldT, sims)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(w, "  check: %d of %d Gets equal their row in %s\n", res.Checked-res.Mismatches, res.Checked, oldT)

	// With a relay: it starts before the window opens (its first start
	// begins at the server's current position).
	var relay *cdc.Relay
	if cfg.RelayDSN != "" {
		var stop func() error
		relay, stop, err = startRelay(ctx, cfg, db, rdb, load, newT)
		if err != nil {
			return res, err
		}
		defer func() {
			res.RelayStats = relay.Stats()
			err = errors.Join(err, stop())
		}()
		res.Relay = true
		fmt.Fprintf(w, "relay: a cdc.Relay tails the binlog with a rule on %s (key tenant:iccid:status, version floor from its version column)\n", newT)
	}

	// The migration window.
	if _, err := db.ExecContext(ctx, "INSERT INTO "+newT+" SELECT * FROM "+oldT); err != nil {
		return res, fmt.Errorf("backfill: %w", err)
	}
	source.Store(&newT)
	fmt.Fprintf(w, "migration window: %s backfilled into %s; readers switched to %s; webhooks dual-write both tables, a copier lags for some SIMs\n",
		oldT, newT, newT)
	cp := &copier{db: db, table: newT}
	window := status.Stats()
	for r, every := range lagEvery {
		t := time.Now()
		var rd round
		// One webhook per SIM, spread over the workers.
		var lagging atomic.Int64
		var wg sync.WaitGroup
		for wk := range cfg.Webhooks {
			wg.Go(func() {
				for i := wk; i < len(sims); i += cfg.Webhooks {
					s := sims[i]
					lag := every > 0 && i%every == 0
					_, err := status.WriteThrough(ctx, s.Key(), func(ctx context.Context) (SIM, error) {
						if lag {
							lagging.Add(1)
							return setStatus(ctx, db, oldT, s.Tenant, s.ICCID, statuses[(r+i)%len(statuses)], "", cp)
						}
						return setStatus(ctx, db, oldT, s.Tenant, s.ICCID, statuses[(r+i)%len(statuses)], newT, nil)
					})
					if err != nil {
						writeErr.CompareAndSwap(nil, &err)
						return
					}
				}
			})
		}
		wg.Wait()
		if p := writeErr.Load(); p != nil {
			return res, fmt.Errorf("webhook: %w", *p)
		}
		rd.Writes, rd.Lagging = len(sims), int(lagging.Load())

		// Reconcile against sims_v2 while the copier still lags, once the
		// webhooks' queued invalidations (a WriteThrough whose Redis write
		// failed queues one) are applied: until then an entry the queue
		// is about to invalidate counts as stale, and the queue's
		// tombstone then keeps the pass from evicting it.
		if err := drainQueued(ctx, status); err != nil {
			return res, err
		}
		pt := time.Now()
		s0 := status.Stats().StaleEntriesFound
		rd.Reconcile, err = status.Reconcile(ctx, &cache.ReconcileOptions{Rate: 20000})
		if err != nil {
			return res, fmt.Errorf("reconcile: %w", err)
		}
		rd.PassElapsed = time.Since(pt)
		rd.StaleFound = status.Stats().StaleEntriesFound - s0

		// The copier catches up: sims_v2 gets the late writes.
		if rd.CaughtUp, err = cp.catchUp(ctx); err != nil {
			return res, fmt.Errorf("copier: %w", err)
		}
		rd.Elapsed = time.Since(t)
		res.Rounds = append(res.Rounds, rd)
		fmt.Fprintf(w, "  round %d: %d webhooks, %d of them late in %s → reconcile pass: scanned %d, stale %d, evicted %d, errors %d (stale_entry_found +%d) in %v; copier caught up %d rows\n",
			r+1, rd.Writes, rd.Lagging, newT, rd.Reconcile.Scanned, rd.Reconcile.Divergent, rd.Reconcile.Evicted,
			rd.Reconcile.Errors, rd.StaleFound, rd.PassElapsed.Round(time.Millisecond), rd.CaughtUp)
		if rd.Reconcile.Divergent == 0 {
			fmt.Fprintf(w, "  a pass found 0 stale entries: the window is over, the cache agrees with %s\n", newT)
			break
		}
	}

	// After the window: the old service changes some SIMs with plain SQL,
	// on both tables, without telling the cache.
	var around []SIM
	for i := 0; i < len(sims); i += cfg.Around {
		s := sims[i]
		if _, err := setStatus(ctx, db, oldT, s.Tenant, s.ICCID, "suspended-by-support", newT, nil); err != nil {
			return res, fmt.Errorf("old service: %w", err)
		}
		around = append(around, s)
	}
	res.Around = len(around)
	fmt.Fprintf(w, "after the window: the old service changed %d SIMs with plain SQL on both tables, around the cache\n", res.Around)
	if relay != nil {
		t := time.Now()
		if err := relayCaughtUp(ctx, db, relay); err != nil {
			return res, err
		}
		res.RelayWait = time.Since(t)
		fmt.Fprintf(w, "  the relay applied their invalidations %v after the last COMMIT returned\n", res.RelayWait.Round(time.Microsecond))
	}
	if err := drainQueued(ctx, status); err != nil {
		return res, err
	}
	s0 := status.Stats().StaleEntriesFound
	res.After, err = status.Reconcile(ctx, &cache.ReconcileOptions{Rate: 20000})
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	fmt.Fprintf(w, "  reconcile pass after the window: scanned %d, stale %d, evicted %d, errors %d (stale_entry_found +%d)\n",
		res.After.Scanned, res.After.Divergent, res.After.Evicted, res.After.Errors, status.Stats().StaleEntriesFound-s0)
	switch {
	case relay != nil && res.After.Divergent == 0:
		fmt.Fprintf(w, "  the relay had invalidated every key the writes around the cache changed: nothing was stale\n")
	case relay == nil && res.After.Divergent > 0:
		fmt.Fprintf(w, "  without a relay those entries stayed stale until this pass (or their TTL); run with -relay to see the binlog close the gap\n")
	}

	// The cache agrees with sims_v2, and both tables hold the same rows.
	res.FinalChecked, res.FinalMisses, err = compare(ctx, status, db, newT, sims)
	if err != nil {
		return res, err
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+oldT+` o JOIN `+newT+` n USING (tenant, iccid)
		WHERE o.status <> n.status OR o.version <> n.version`).Scan(&res.TablesDiffer); err != nil {
		return res, err
	}
	s := status.Stats()
	fmt.Fprintf(w, "at the end: %d of %d Gets equal their row in %s; %d rows differ between the tables; stale_entry_found %d in all\n",
		res.FinalChecked-res.FinalMisses, res.FinalChecked, newT, res.TablesDiffer, s.StaleEntriesFound)
	fmt.Fprintf(w, "  meanwhile %d fills were refused (stale_set_prevented): between a pass and the copier catching up, readers of an evicted SIM got the lagging row of %s, and its lower version kept it out of the cache\n",
		s.StaleSetsPrevented-window.StaleSetsPrevented, newT)
	return res, nil
}

// startRelay starts a cdc.Relay on cfg.RelayDSN with a rule on table,
// invalidating through a Loader of its own over the same entries (same
// name and prefix; its calls carry batches, so it gets a larger
// RedisTimeout and a breaker apart from the readers'). It returns once the
// relay leads; stop ends it and deletes its checkpoint row (its name is
// this run's alone).
func startRelay(ctx context.Context, cfg config, db *sql.DB, rdb redis.UniversalClient, load cache.LoadFunc[SIM], table string) (*cdc.Relay, func() error, error) {
	target, err := cache.New(rdb, "sim", load, &cache.Options{Prefix: cfg.Prefix, TTL: 10 * time.Minute, RedisTimeout: time.Second})
	if err != nil {
		return nil, nil, err
	}
	key := func(row cdc.Row) (string, bool, error) {
		tenant, _ := row.Value("tenant")
		iccid, _ := row.Value("iccid")
		t, ok1 := tenant.(string)
		i, ok2 := iccid.(string)
		return simKey(t, i), ok1 && ok2, nil
	}
	name := "simstatus-" + table
	relay, err := cdc.New(cfg.RelayDSN, []cdc.Rule{{Table: table, Target: target, Key: key, VersionColumn: "version"}},
		&cdc.Options{Name: name, Logger: cfg.RelayLogger, StatusRedis: rdb, StatusPrefix: cfg.Prefix})
	if err != nil {
		target.Close()
		return nil, nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	stop := func() error {
		cancel()
		err := <-done
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, derr := db.ExecContext(cctx, "DELETE FROM cache_cdc_checkpoint WHERE name = ?", name)
		return errors.Join(err, derr, relay.Close(), target.Close())
	}
	for !relay.Stats().Leader {
		select {
		case err := <-done:
			done <- err
			return nil, nil, errors.Join(fmt.Errorf("relay: %w", err), stop())
		case <-ctx.Done():
			return nil, nil, errors.Join(ctx.Err(), stop())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return relay, stop, nil
}

// relayCaughtUp waits until the relay has applied every transaction the
// server had committed when it was called (MariaDB GTIDs; elsewhere until
// it has applied what it knows to be behind).
func relayCaughtUp(ctx context.Context, db *sql.DB, relay *cdc.Relay) error {
	var pos string
	if err := db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("relay: reading the server's GTID position (MariaDB): %w", err)
	}
	want := gtidSeqs(pos)
	for {
		got := gtidSeqs(relay.Stats().Applied.GTID)
		caught := true
		for domain, seq := range want {
			if got[domain] < seq {
				caught = false
			}
		}
		if caught {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relay: waiting to apply %s: %w", pos, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// gtidSeqs reads a MariaDB GTID set ("domain-server-seq,...") into domain
// → sequence number.
func gtidSeqs(set string) map[string]uint64 {
	out := map[string]uint64{}
	for g := range strings.SplitSeq(set, ",") {
		parts := strings.Split(strings.TrimSpace(g), "-")
		if len(parts) != 3 {
			continue
		}
		n, err := strconv.ParseUint(parts[2], 10, 64)
		if err == nil {
			out[parts[0]] = max(out[parts[0]], n)
		}
	}
	return out
}

func hitRate(before, after cache.Stats) float64 {
	hits := after.Hits - before.Hits
	total := hits + after.Misses - before.Misses
	if total == 0 {
		return 0
	}
	return 100 * float64(hits) / float64(total)
}

// compare Gets every SIM and compares it with its row in table.
func compare(ctx context.Context, status *cache.Loader[SIM], db *sql.DB, table string, sims []SIM) (checked, mismatches int, err error) {
	for _, s := range sims {
		got, err := status.Get(ctx, s.Key())
		if err != nil {
			return checked, mismatches, fmt.Errorf("get %s: %w", s.Key(), err)
		}
		want, err := readSIM(ctx, db, table, s.Tenant, s.ICCID)
		if err != nil {
			return checked, mismatches, err
		}
		checked++
		if got != want {
			mismatches++
		}
	}
	return checked, mismatches, nil
}

func createTables(ctx context.Context, db *sql.DB, tables ...string) error {
	for _, t := range tables {
		if _, err := db.ExecContext(ctx, `CREATE TABLE `+t+` (
			tenant  VARCHAR(64)  NOT NULL,
			iccid   VARCHAR(22)  NOT NULL,
			status  VARCHAR(32)  NOT NULL,
			version BIGINT       NOT NULL DEFAULT 1,
			PRIMARY KEY (tenant, iccid)
		)`); err != nil {
			return fmt.Errorf("create table %s: %w", t, err)
		}
	}
	return nil
}

// seed inserts cfg.Tenants × cfg.SIMs SIMs in inventory.
func seed(ctx context.Context, db *sql.DB, table string, cfg config) ([]SIM, error) {
	var sims []SIM
	var args []any
	var q strings.Builder
	q.WriteString("INSERT INTO " + table + " (tenant, iccid, status) VALUES ")
	for t := range cfg.Tenants {
		for i := range cfg.SIMs {
			s := SIM{Tenant: fmt.Sprintf("tenant%d", t+1), ICCID: fmt.Sprintf("894400%013d", t*100000+i), Status: "inventory", Version: 1}
			if len(sims) > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?)")
			args = append(args, s.Tenant, s.ICCID, s.Status)
			sims = append(sims, s)
		}
	}
	if _, err := db.ExecContext(ctx, q.String(), args...); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	return sims, nil
}

func readSIM(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, table, tenant, iccid string) (SIM, error) {
	var s SIM
	err := q.QueryRowContext(ctx, `SELECT tenant, iccid, status, version FROM `+table+
		` WHERE tenant = ? AND iccid = ?`, tenant, iccid).Scan(&s.Tenant, &s.ICCID, &s.Status, &s.Version)
	return s, err
}

// setStatus is the webhook's write: in one transaction it updates the SIM
// in table, re-reads it and — during the migration window — writes the same
// row to dual (when not ""), then commits. With a copier instead, the row
// reaches the new table only when the copier catches up.
func setStatus(ctx context.Context, db *sql.DB, table, tenant, iccid, status, dual string, late *copier) (SIM, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return SIM{}, err
	}
	defer tx.Rollback() // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `UPDATE `+table+` SET status = ?, version = version + 1
		WHERE tenant = ? AND iccid = ?`, status, tenant, iccid); err != nil {
		return SIM{}, err
	}
	s, err := readSIM(ctx, tx, table, tenant, iccid)
	if err != nil {
		return SIM{}, err
	}
	if dual != "" {
		if err := copyRow(ctx, tx, dual, s); err != nil {
			return SIM{}, err
		}
	}
	if err := tx.Commit(); err != nil {
		return SIM{}, err
	}
	if late != nil {
		late.add(s)
	}
	return s, nil
}

// copyRow writes s to table unless the row there is as new already:
// versions never go backwards, whatever order the copies arrive in.
func copyRow(ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, table string, s SIM) error {
	_, err := q.ExecContext(ctx, `UPDATE `+table+` SET status = ?, version = ?
		WHERE tenant = ? AND iccid = ? AND version < ?`, s.Status, s.Version, s.Tenant, s.ICCID, s.Version)
	return err
}

// copier applies writes to the new table late: it holds them until it
// catches up. It writes the database only; the cache is not told.
type copier struct {
	db      *sql.DB
	table   string
	mu      sync.Mutex
	pending []SIM
}

func (c *copier) add(s SIM) {
	c.mu.Lock()
	c.pending = append(c.pending, s)
	c.mu.Unlock()
}

// catchUp applies every held write and returns how many it applied.
func (c *copier) catchUp(ctx context.Context) (int, error) {
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	for i, s := range batch {
		if err := copyRow(ctx, c.db, c.table, s); err != nil {
			return i, err
		}
	}
	return len(batch), nil
}

// deletePrefix deletes the keys under prefix (SCAN + DEL; nothing else).
func deletePrefix(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	del := func(ctx context.Context, c redis.UniversalClient) error {
		iter := c.Scan(ctx, 0, globEscape(prefix)+"*", 100).Iterator()
		for iter.Next(ctx) {
			if err := c.Del(ctx, iter.Val()).Err(); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return del(ctx, m) })
	default:
		return del(ctx, rdb)
	}
}

// globEscape escapes the characters SCAN's MATCH pattern gives a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func randomHex() string {
	var b [4]byte
	if _, err := crand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func main() {
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN (go-sql-driver/mysql format)")
	prefix := flag.String("prefix", "simstatus-example:", "Redis key prefix (its keys are deleted before and after the run)")
	withRelay := flag.Bool("relay", false, "tail the binlog of -dsn with a cdc.Relay (the server needs --log-bin --binlog-format=ROW --binlog-row-metadata=FULL)")
	flag.Parse()

	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// ContextTimeoutEnabled lets the cache's RedisTimeout bound every call;
	// without it a hung Redis holds a Get for seconds (and cache.New refuses
	// the client).
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := config{Prefix: *prefix}
	if *withRelay {
		cfg.RelayDSN = *dsn
	}
	if _, err := run(ctx, os.Stdout, db, rdb, cfg); err != nil {
		log.Fatal(err)
	}
}

// drainQueued waits until l has no invalidation queued for retry: what an
// operator checks (cache_invalidations_pending) before a reconcile pass.
func drainQueued(ctx context.Context, l *cache.Loader[SIM]) error {
	deadline := time.Now().Add(time.Minute)
	for l.Stats().InvalidationsPending > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d invalidations still queued after a minute", l.Stats().InvalidationsPending)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}
