package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Invalidator is what a Relay applies rows to: *cache.Loader[T] satisfies
// it. Invalidate must be idempotent — the relay delivers at least once.
type Invalidator interface {
	Invalidate(ctx context.Context, keys ...string) error
}

// RelayOptions configure a Relay. A nil *RelayOptions means all defaults.
type RelayOptions struct {
	// PollInterval is how long Run waits after finding the outbox empty
	// before looking again.
	// default: 100ms
	PollInterval time.Duration

	// BatchSize is how many rows one transaction locks, applies and
	// deletes.
	// default: 100
	BatchSize int

	// MinBackoff is Run's first wait after a failed attempt (Redis or the
	// database down); each further failure doubles it, up to MaxBackoff.
	// Waits are jittered to between half and all of the value. A success
	// resets it.
	// default: 100ms
	MinBackoff time.Duration

	// MaxBackoff bounds Run's wait between failed attempts.
	// default: 5s
	MaxBackoff time.Duration

	// StatsInterval is how often Run refreshes the Pending, Unowned and Lag
	// gauges (one COUNT over the outbox table). RelayOnce always does.
	// default: 1s
	StatsInterval time.Duration

	// Registerer, when set, receives the relay's Prometheus metrics (see
	// Stats). Several relays may share one registry.
	// default: nil (Stats only)
	Registerer prometheus.Registerer

	// Logger receives failed attempts and changes in the number of unowned
	// rows; never keys.
	// default: discards everything
	Logger *slog.Logger
}

// Relay applies the rows of an outbox table to Redis: in each transaction
// it locks up to BatchSize of the oldest rows of its loaders (SELECT … FOR
// UPDATE SKIP LOCKED), calls Invalidate on their loaders, deletes the rows
// whose invalidation succeeded and commits. Several relays, in one process
// or many, may run over the same table: SKIP LOCKED hands each row to one
// of them at a time.
//
// Delivery is at least once: a relay that dies (or whose commit fails)
// after invalidating leaves the rows for the next one, which invalidates
// again — harmless, invalidation is idempotent. A row is deleted only after
// its Invalidate succeeded, so no committed invalidation is lost.
//
// Rows naming a loader the relay was not given are left alone, counted as
// Unowned and logged: another service's relay may own them (several
// services can share one outbox table, each relaying its own loaders).
// Rows nobody owns stay until an operator deletes them.
//
// A Relay is safe for concurrent use.
type Relay struct {
	db      *sql.DB
	table   string
	loaders map[string]Invalidator
	names   []string // sorted keys of loaders, the order of the IN lists
	o       RelayOptions
	logger  *slog.Logger

	selectQuery string
	statsQuery  string
	statsArgs   []any
	deleteQuery string

	stats stats
	prom  *promMetrics // nil without a Registerer
}

// NewRelay returns a Relay applying the outbox's rows to loaders, keyed by
// the loader names given to Enqueue (use each Loader's Name). The map is
// copied.
func (o *Outbox) NewRelay(loaders map[string]Invalidator, opts *RelayOptions) (*Relay, error) {
	if len(loaders) == 0 {
		return nil, errors.New("outbox: NewRelay needs at least one loader")
	}
	var ro RelayOptions
	if opts != nil {
		ro = *opts
	}
	if ro.PollInterval < 0 || ro.BatchSize < 0 || ro.MinBackoff < 0 || ro.MaxBackoff < 0 || ro.StatsInterval < 0 {
		return nil, errors.New("outbox: negative RelayOptions field")
	}
	ro.PollInterval = or(ro.PollInterval, 100*time.Millisecond)
	ro.BatchSize = or(ro.BatchSize, 100)
	ro.MinBackoff = or(ro.MinBackoff, 100*time.Millisecond)
	ro.MaxBackoff = or(ro.MaxBackoff, 5*time.Second)
	ro.StatsInterval = or(ro.StatsInterval, time.Second)
	if ro.MaxBackoff < ro.MinBackoff {
		return nil, fmt.Errorf("outbox: MaxBackoff %v below MinBackoff %v", ro.MaxBackoff, ro.MinBackoff)
	}
	r := &Relay{
		db:      o.db,
		table:   o.table,
		loaders: make(map[string]Invalidator, len(loaders)),
		o:       ro,
		logger:  ro.Logger,
	}
	if r.logger == nil {
		r.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for name, inv := range loaders {
		if name == "" || inv == nil {
			return nil, fmt.Errorf("outbox: loader %q: empty name or nil Invalidator", name)
		}
		r.loaders[name] = inv
		r.names = append(r.names, name)
	}
	slices.Sort(r.names)

	in := "(" + strings.TrimSuffix(strings.Repeat("?,", len(r.names)), ",") + ")"
	// ORDER BY id: oldest first, through the primary key. LIMIT bounds the
	// rows (and locks) of one transaction. SKIP LOCKED: rows another relay
	// holds are not waited for.
	r.selectQuery = "SELECT id, loader, cache_key FROM " + o.quoted +
		" WHERE loader IN " + in + " ORDER BY id LIMIT " + strconv.Itoa(ro.BatchSize) +
		" FOR UPDATE SKIP LOCKED"
	// The age is computed by the server, so application clocks don't skew it.
	r.statsQuery = "SELECT COUNT(*), COALESCE(SUM(loader IN " + in + "), 0), " +
		"TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN loader IN " + in + " THEN created_at END), NOW(6)) FROM " + o.quoted
	for range 2 {
		for _, n := range r.names {
			r.statsArgs = append(r.statsArgs, n)
		}
	}
	r.deleteQuery = "DELETE FROM " + o.quoted + " WHERE id = ?"
	if ro.Registerer != nil {
		p, err := newPromMetrics(ro.Registerer)
		if err != nil {
			return nil, err
		}
		r.prom = p
	}
	return r, nil
}

func or[V comparable](v, def V) V {
	var zero V
	if v == zero {
		return def
	}
	return v
}

// RelayOnce applies batches until no unlocked row of the relay's loaders is
// left or an attempt fails, then refreshes the gauges. It returns how many
// rows it applied (and deleted), and the first failure; rows it could not
// apply stay in the outbox. Run calls it in a loop; tests and cron-style
// jobs may call it directly.
func (r *Relay) RelayOnce(ctx context.Context) (applied int, err error) {
	applied, err = r.drain(ctx)
	if serr := r.refreshStats(ctx); err == nil {
		err = serr
	}
	return applied, err
}

// Run relays until ctx ends: it drains the outbox, waits PollInterval, and
// again. After a failed attempt it waits with exponential backoff (MinBackoff
// doubling up to MaxBackoff, jittered) instead; failures are logged and
// counted, never returned. Run returns ctx's error.
func (r *Relay) Run(ctx context.Context) error {
	var backoff time.Duration
	var lastStats time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		_, err := r.drain(ctx)
		if time.Since(lastStats) >= r.o.StatsInterval {
			lastStats = time.Now()
			if serr := r.refreshStats(ctx); serr != nil && err == nil && ctx.Err() == nil {
				r.logger.Warn("outbox: refreshing relay stats failed", "table", r.table, "error", serr)
				err = serr
			}
		}
		wait := r.o.PollInterval
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			backoff = min(max(2*backoff, r.o.MinBackoff), r.o.MaxBackoff)
			// Jitter: relays that failed together do not retry together.
			wait = backoff/2 + rand.N(backoff/2+1)
		default:
			backoff = 0
		}
		t.Reset(wait)
	}
}

// drain runs batches while they come back full and succeed.
func (r *Relay) drain(ctx context.Context) (int, error) {
	total := 0
	for ctx.Err() == nil {
		n, more, err := r.batch(ctx)
		total += n
		if err != nil {
			if ctx.Err() != nil {
				// Stopping (Run's ctx ended), not failing: the rows are
				// kept like after any error, but nothing is counted.
				return total, err
			}
			r.stats.errors.Add(1)
			if r.prom != nil {
				r.prom.errors.WithLabelValues(r.table).Inc()
			}
			r.logger.Warn("outbox: relay attempt failed; rows kept for a retry",
				"table", r.table, "applied", n, "error", err)
			return total, err
		}
		if !more {
			break
		}
	}
	return total, ctx.Err()
}

// row is one outbox row.
type row struct {
	id     int64
	loader string
	key    string
}

// batch applies one transaction's worth of rows. more reports a full batch:
// there may be more rows to take.
func (r *Relay) batch(ctx context.Context) (applied int, more bool, err error) {
	// READ COMMITTED: the locking read takes no gap locks, so writers'
	// Enqueues (inserting past the last row) never wait for a relay, and
	// rows of other loaders scanned past are not kept locked.
	tx, err := r.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return 0, false, fmt.Errorf("outbox: begin: %w", err)
	}
	defer tx.Rollback() // after Commit: a no-op

	rows, err := r.lock(ctx, tx)
	if err != nil || len(rows) == 0 {
		return 0, false, err
	}

	// One Invalidate per loader, with its keys deduplicated: an outbox
	// often holds the same key many times (a hot row written repeatedly).
	byLoader := make(map[string][]row)
	for _, rw := range rows {
		byLoader[rw.loader] = append(byLoader[rw.loader], rw)
	}
	var done []int64
	var errs []error
	for _, name := range r.names {
		rs := byLoader[name]
		if len(rs) == 0 {
			continue
		}
		keys := make([]string, 0, len(rs))
		seen := make(map[string]bool, len(rs))
		for _, rw := range rs {
			if !seen[rw.key] {
				seen[rw.key] = true
				keys = append(keys, rw.key)
			}
		}
		if err := r.loaders[name].Invalidate(ctx, keys...); err != nil {
			// Keep this loader's rows (the rollback or commit releases
			// them); the others' invalidations did land.
			errs = append(errs, fmt.Errorf("outbox: invalidating %d keys of %s: %w", len(keys), name, err))
			continue
		}
		for _, rw := range rs {
			done = append(done, rw.id)
		}
	}
	if len(done) > 0 {
		// If this DELETE or the COMMIT fails, or the process dies here, the
		// rows come back to a relay and are invalidated again: at least once.
		if err := r.delete(ctx, tx, done); err != nil {
			return 0, false, errors.Join(append(errs, err)...)
		}
		if err := tx.Commit(); err != nil {
			return 0, false, errors.Join(append(errs, fmt.Errorf("outbox: commit: %w", err))...)
		}
		r.stats.applied.Add(uint64(len(done)))
		if r.prom != nil {
			r.prom.applied.WithLabelValues(r.table).Add(float64(len(done)))
		}
	}
	return len(done), len(rows) == r.o.BatchSize, errors.Join(errs...)
}

// lock selects and locks the oldest rows of the relay's loaders that no
// other relay holds.
func (r *Relay) lock(ctx context.Context, tx *sql.Tx) ([]row, error) {
	args := make([]any, len(r.names))
	for i, n := range r.names {
		args[i] = n
	}
	rs, err := tx.QueryContext(ctx, r.selectQuery, args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: select: %w", err)
	}
	defer rs.Close()
	var rows []row
	for rs.Next() {
		var rw row
		if err := rs.Scan(&rw.id, &rw.loader, &rw.key); err != nil {
			return nil, fmt.Errorf("outbox: select: %w", err)
		}
		rows = append(rows, rw)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("outbox: select: %w", err)
	}
	return rows, nil
}

// delete removes the applied rows, in tx, one primary-key lookup each.
//
// Not one DELETE … WHERE id IN (…): on a small table (an outbox usually is)
// MariaDB and MySQL scan it whole for that, even with FORCE INDEX, and the
// scan waits for the rows other relays hold locked — relays deadlock on
// each other. DELETE … WHERE id = ? locks exactly the row it deletes.
func (r *Relay) delete(ctx context.Context, tx *sql.Tx, ids []int64) error {
	stmt, err := tx.PrepareContext(ctx, r.deleteQuery)
	if err != nil {
		return fmt.Errorf("outbox: delete: %w", err)
	}
	defer stmt.Close()
	for _, id := range ids {
		if _, err := stmt.ExecContext(ctx, id); err != nil {
			return fmt.Errorf("outbox: delete: %w", err)
		}
	}
	return nil
}
