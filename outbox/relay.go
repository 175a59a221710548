package outbox

import (
	"cmp"
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
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Invalidator is a cache Loader as a Relay uses it: its name and namespace
// select its rows (see [Target], [Namespace]) and Invalidate applies them.
// *cache.Loader[T] satisfies it. Invalidate must be idempotent — the relay
// delivers at least once.
type Invalidator interface {
	Target
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

	// MinBackoff is the first wait after a failed attempt; each further
	// failure doubles it, up to MaxBackoff. Waits are jittered to between
	// half and all of the value; a success resets them. A loader whose
	// Invalidate fails (its Redis down) is parked for that wait — its rows
	// are skipped, the other loaders' rows keep flowing — and tried again
	// after it; a database failure makes Run wait before its next attempt.
	// default: 100ms
	MinBackoff time.Duration

	// MaxBackoff bounds the waits between failed attempts.
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

	// Logger receives failed attempts, and a warning when a row of a
	// namespace the relay does not know has waited longer than
	// UnownedWarnAge (no relay seems to own it); never keys.
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
// A row belongs to the loader of its namespace (see [Namespace]): two
// services sharing the table, each with a loader "user" under its own
// Options.Prefix, never take each other's rows. Rows written before the
// namespace column existed (namespace ”) go to every loader of their
// name, as they did then.
//
// Delivery is at least once: a relay that dies (or whose commit fails)
// after invalidating leaves the rows for the next one, which invalidates
// again — harmless, invalidation is idempotent. A row is deleted only after
// its Invalidate succeeded, so no committed invalidation is lost.
//
// A loader whose Invalidate fails does not hold up the others: its rows
// are skipped, and the loader parked and retried alone with exponential
// backoff (MinBackoff to MaxBackoff), while the batches carry on with the
// other loaders' rows.
//
// Rows of namespaces the relay was not given are left alone, counted as
// Unowned: another service's relay may own them. Once the oldest of them
// has waited longer than UnownedWarnAge (1 minute), a warning is logged:
// nobody seems to own them. Rows nobody owns stay until an operator
// deletes them.
//
// A Relay is safe for concurrent use.
type Relay struct {
	db      *sql.DB
	table   string
	quoted  string
	targets []*target            // sorted by namespace
	byNS    map[string]*target   // namespace → loader
	byName  map[string][]*target // name → loaders: the owners of rows without a namespace
	o       RelayOptions
	logger  *slog.Logger

	statsQuery  string
	statsArgs   []any
	deleteQuery string

	parked parking // Run's parked loaders, each retried by a probe goroutine

	stats stats
	prom  *promMetrics // nil without a Registerer
}

// target is one of a relay's loaders.
type target struct {
	name, ns string
	inv      Invalidator
}

// NewRelay returns a Relay applying the outbox's rows to loaders (typically
// *cache.Loader values). No two may have the same namespace.
func (o *Outbox) NewRelay(loaders []Invalidator, opts *RelayOptions) (*Relay, error) {
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
		db:     o.db,
		table:  o.table,
		quoted: o.quoted,
		byNS:   make(map[string]*target, len(loaders)),
		byName: make(map[string][]*target),
		o:      ro,
		logger: ro.Logger,
		parked: parking{min: ro.MinBackoff, max: ro.MaxBackoff},
	}
	if r.logger == nil {
		r.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for _, inv := range loaders {
		if inv == nil {
			return nil, errors.New("outbox: nil Invalidator")
		}
		t := &target{name: inv.Name(), ns: Namespace(inv), inv: inv}
		if err := checkNames(t.name, t.ns); err != nil {
			return nil, err
		}
		if r.byNS[t.ns] != nil {
			return nil, fmt.Errorf("outbox: two loaders with namespace %q", t.ns)
		}
		r.byNS[t.ns] = t
		r.byName[t.name] = append(r.byName[t.name], t)
		r.targets = append(r.targets, t)
	}
	slices.SortFunc(r.targets, func(a, b *target) int { return strings.Compare(a.ns, b.ns) })

	// The age is computed by the server, so application clocks don't skew it.
	where, args := r.ownedBy(r.targets)
	r.statsQuery = "SELECT COUNT(*), COALESCE(SUM(" + where + "), 0), " +
		"TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN " + where + " THEN created_at END), NOW(6)), " +
		"TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN NOT " + where + " THEN created_at END), NOW(6)) FROM " + o.quoted
	r.statsArgs = slices.Concat(args, args, args)
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

// ownedBy returns the condition selecting the rows of targets: their
// namespaces, and rows without one (older writers) of the names all of
// whose loaders are among targets (such a row goes to each of them).
func (r *Relay) ownedBy(targets []*target) (string, []any) {
	var nss, names []any
	in := make(map[*target]bool, len(targets))
	for _, t := range targets {
		nss = append(nss, t.ns)
		in[t] = true
	}
	done := make(map[string]bool)
	for _, t := range targets {
		if done[t.name] {
			continue
		}
		done[t.name] = true
		if !slices.ContainsFunc(r.byName[t.name], func(o *target) bool { return !in[o] }) {
			names = append(names, t.name)
		}
	}
	cond := "namespace IN " + placeholders(len(nss))
	if len(names) > 0 {
		cond += " OR (namespace = '' AND loader IN " + placeholders(len(names)) + ")"
	}
	return "(" + cond + ")", append(nss, names...)
}

func placeholders(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?,", n), ",") + ")"
}

func or[V comparable](v, def V) V {
	var zero V
	if v == zero {
		return def
	}
	return v
}

// RelayOnce applies batches until no unlocked row of the relay's loaders is
// left, then refreshes the gauges. A loader whose Invalidate fails is
// skipped for the rest of the call (its rows stay; the others' are
// applied); a database failure ends the call. It returns how many rows it
// applied (and deleted), and the failures joined. Run calls it in a loop;
// tests and cron-style jobs may call it directly.
func (r *Relay) RelayOnce(ctx context.Context) (applied int, err error) {
	p := &parking{min: r.o.MinBackoff, max: r.o.MaxBackoff}
	applied, err = r.drain(ctx, p, nil)
	if serr := r.refreshStats(ctx); err == nil {
		err = serr
	}
	return applied, err
}

// Run relays until ctx ends: it drains the outbox, waits PollInterval, and
// again. A loader whose Invalidate fails is parked: Run leaves its rows
// out of its batches and retries it on a goroutine of its own with
// exponential backoff (MinBackoff doubling up to MaxBackoff, jittered),
// so that a loader whose Redis is slow to fail (a blackhole holds each
// call for its whole timeout) does not slow the others; once it succeeds
// it has drained its rows and rejoins the batches. After a database
// failure Run waits with the same backoff. Failures are logged and
// counted, never returned. Run returns ctx's error once its goroutines
// have ended.
func (r *Relay) Run(ctx context.Context) error {
	var probes sync.WaitGroup
	defer probes.Wait()
	onPark := func(t *target) { probes.Go(func() { r.probe(ctx, t) }) }
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
		_, err := r.drain(ctx, &r.parked, onPark)
		var dbErr error
		if errors.As(err, new(*sqlError)) {
			dbErr = err
		}
		if time.Since(lastStats) >= r.o.StatsInterval {
			lastStats = time.Now()
			if serr := r.refreshStats(ctx); serr != nil && ctx.Err() == nil {
				r.logger.Warn("outbox: refreshing relay stats failed", "table", r.table, "error", serr)
				dbErr = cmp.Or(dbErr, serr)
			}
		}
		wait := r.o.PollInterval
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case dbErr != nil:
			backoff = min(max(2*backoff, r.o.MinBackoff), r.o.MaxBackoff)
			// Jitter: relays that failed together do not retry together.
			wait = jitter(backoff)
		default:
			backoff = 0
		}
		t.Reset(wait)
	}
}

// probe retries a parked loader alone, with backoff, until its batches
// succeed (it is then unparked, its rows drained) or ctx ends.
func (r *Relay) probe(ctx context.Context, t *target) {
	only := []*target{t}
	for {
		if !sleep(ctx, r.parked.until(t)) {
			return
		}
		ok := true
		for ctx.Err() == nil {
			res, err := r.batch(ctx, only)
			if ctx.Err() != nil {
				return
			}
			if len(res.failed) > 0 || err != nil {
				ok = false
				r.failures(res.failed, &r.parked, nil)
				if err != nil {
					r.countError()
					r.logger.Warn("outbox: relay attempt failed; rows kept for a retry", "table", r.table, "error", err)
					r.parked.failed(t, time.Now())
				}
				break
			}
			if !res.more {
				break
			}
		}
		if ok && ctx.Err() == nil {
			r.parked.release(t)
			r.setParked(r.parked.count())
			r.logger.Info("outbox: invalidations work again; the loader rejoins the batches",
				"table", r.table, "loader", t.name, "namespace", t.ns)
			return
		}
	}
}

// sleep waits until at, or until ctx ends (false).
func sleep(ctx context.Context, at time.Time) bool {
	tm := time.NewTimer(time.Until(at))
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// jitter returns a wait between half and all of d.
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// sqlError is a failure of the database (begin, select, delete, commit),
// as opposed to a loader's Invalidate.
type sqlError struct{ err error }

func (e *sqlError) Error() string { return e.err.Error() }
func (e *sqlError) Unwrap() error { return e.err }

func sqlErrorf(format string, a ...any) error { return &sqlError{fmt.Errorf(format, a...)} }

// parking holds the loaders whose Invalidate failed: they are left out of
// the relay's batches, and each has a backoff before its next attempt.
type parking struct {
	min, max time.Duration

	mu sync.Mutex // protects byNS
	// byNS: namespace → its backoff; absent: not parked.
	byNS map[string]*park
}

type park struct {
	next time.Time     // when to try again
	wait time.Duration // the last backoff; doubles at every failure
}

// active returns the targets not parked.
func (p *parking) active(targets []*target) []*target {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*target
	for _, t := range targets {
		if p.byNS[t.ns] == nil {
			out = append(out, t)
		}
	}
	return out
}

// failed parks t (again) after a failed Invalidate: its wait, and whether
// it was not parked before.
func (p *parking) failed(t *target, now time.Time) (wait time.Duration, first bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byNS == nil {
		p.byNS = make(map[string]*park)
	}
	pk := p.byNS[t.ns]
	if first = pk == nil; first {
		pk = &park{}
		p.byNS[t.ns] = pk
	}
	pk.wait = min(max(2*pk.wait, p.min), p.max)
	w := jitter(pk.wait)
	pk.next = now.Add(w)
	return w, first
}

// until returns when t may be tried again.
func (p *parking) until(t *target) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pk := p.byNS[t.ns]; pk != nil {
		return pk.next
	}
	return time.Time{}
}

// release unparks t.
func (p *parking) release(t *target) {
	p.mu.Lock()
	delete(p.byNS, t.ns)
	p.mu.Unlock()
}

// count returns how many loaders are parked.
func (p *parking) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byNS)
}

func (r *Relay) setParked(n int) {
	r.stats.parked.Store(int64(n))
	if r.prom != nil {
		r.prom.parked.WithLabelValues(r.table).Set(float64(n))
	}
}

// failures parks the loaders whose Invalidate failed, counting and logging
// each; onPark (if set) is called for those newly parked.
func (r *Relay) failures(fs []failure, p *parking, onPark func(*target)) []error {
	var errs []error
	for _, f := range fs {
		wait, first := p.failed(f.t, time.Now())
		r.countError()
		r.logger.Warn("outbox: invalidation failed; the loader's rows are kept and it is parked",
			"table", r.table, "loader", f.t.name, "namespace", f.t.ns, "keys", f.keys, "retry_in", wait, "error", f.err)
		errs = append(errs, fmt.Errorf("outbox: invalidating %d keys of %s: %w", f.keys, f.t.ns, f.err))
		if first && onPark != nil {
			onPark(f.t)
		}
	}
	r.setParked(p.count())
	return errs
}

// drain runs batches over the loaders not parked while batches come back
// full; a loader whose Invalidate fails is parked in p (and handed to
// onPark, if set) and the batches go on without it. A database failure
// ends the drain.
func (r *Relay) drain(ctx context.Context, p *parking, onPark func(*target)) (int, error) {
	total := 0
	var errs []error
	for ctx.Err() == nil {
		active := p.active(r.targets)
		if len(active) == 0 {
			break
		}
		res, err := r.batch(ctx, active)
		total += res.applied
		if ctx.Err() != nil {
			// Stopping (Run's ctx ended), not failing: the rows are kept
			// like after any error, but nothing is counted.
			return total, errors.Join(append(errs, err)...)
		}
		errs = append(errs, r.failures(res.failed, p, onPark)...)
		if err != nil {
			r.countError()
			r.logger.Warn("outbox: relay attempt failed; rows kept for a retry", "table", r.table, "error", err)
			return total, errors.Join(append(errs, err)...)
		}
		if !res.more {
			break
		}
	}
	return total, errors.Join(append(errs, ctx.Err())...)
}

func (r *Relay) countError() {
	r.stats.errors.Add(1)
	if r.prom != nil {
		r.prom.errors.WithLabelValues(r.table).Inc()
	}
}

// row is one outbox row.
type row struct {
	id         int64
	loader, ns string
	key        string
}

// batchResult is what one batch did.
type batchResult struct {
	applied int
	more    bool      // the batch was full: there may be more rows to take
	ok      []*target // loaders whose Invalidate succeeded
	failed  []failure // loaders whose Invalidate failed: their rows were kept
}

type failure struct {
	t    *target
	keys int
	err  error
}

// batch applies one transaction's worth of the rows of the given loaders.
func (r *Relay) batch(ctx context.Context, active []*target) (res batchResult, err error) {
	// READ COMMITTED: the locking read takes no gap locks, so writers'
	// Enqueues (inserting past the last row) never wait for a relay, and
	// rows of other loaders scanned past are not kept locked.
	tx, err := r.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return res, sqlErrorf("outbox: begin: %w", err)
	}
	defer tx.Rollback() // after Commit: a no-op

	rows, err := r.lock(ctx, tx, active)
	if err != nil || len(rows) == 0 {
		return res, err
	}
	res.more = len(rows) == r.o.BatchSize

	// Which loaders each row goes to: its namespace's, or for a row
	// without one, every loader of its name (all active: see ownedBy).
	owners := func(rw row) []*target {
		if rw.ns != "" {
			return []*target{r.byNS[rw.ns]}
		}
		return r.byName[rw.loader]
	}
	// One Invalidate per loader, with its keys deduplicated: an outbox
	// often holds the same key many times (a hot row written repeatedly).
	keys := make(map[*target][]string)
	seen := make(map[*target]map[string]bool)
	for _, rw := range rows {
		for _, t := range owners(rw) {
			if seen[t] == nil {
				seen[t] = make(map[string]bool)
			}
			if !seen[t][rw.key] {
				seen[t][rw.key] = true
				keys[t] = append(keys[t], rw.key)
			}
		}
	}
	failed := make(map[*target]bool)
	for _, t := range r.targets { // in a stable order
		ks := keys[t]
		if len(ks) == 0 {
			continue
		}
		if err := t.inv.Invalidate(ctx, ks...); err != nil {
			// Keep this loader's rows (the rollback or commit releases
			// them); the others' invalidations did land.
			failed[t] = true
			res.failed = append(res.failed, failure{t: t, keys: len(ks), err: err})
			continue
		}
		res.ok = append(res.ok, t)
	}
	var done []int64
	for _, rw := range rows {
		if !slices.ContainsFunc(owners(rw), func(t *target) bool { return failed[t] }) {
			done = append(done, rw.id)
		}
	}
	if len(done) == 0 {
		return res, nil
	}
	// If this DELETE or the COMMIT fails, or the process dies here, the
	// rows come back to a relay and are invalidated again: at least once.
	if err := r.delete(ctx, tx, done); err != nil {
		return res, err
	}
	if err := tx.Commit(); err != nil {
		return res, sqlErrorf("outbox: commit: %w", err)
	}
	res.applied = len(done)
	r.stats.applied.Add(uint64(len(done)))
	if r.prom != nil {
		r.prom.applied.WithLabelValues(r.table).Add(float64(len(done)))
	}
	return res, nil
}

// lock selects and locks the oldest rows of the given loaders that no
// other relay holds.
func (r *Relay) lock(ctx context.Context, tx *sql.Tx, active []*target) ([]row, error) {
	where, args := r.ownedBy(active)
	// ORDER BY id: oldest first, through the primary key. LIMIT bounds the
	// rows (and locks) of one transaction. SKIP LOCKED: rows another relay
	// holds are not waited for.
	q := "SELECT id, loader, namespace, cache_key FROM " + r.quoted + " WHERE " + where +
		" ORDER BY id LIMIT " + strconv.Itoa(r.o.BatchSize) + " FOR UPDATE SKIP LOCKED"
	rs, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, sqlErrorf("outbox: select: %w", err)
	}
	defer rs.Close()
	var rows []row
	for rs.Next() {
		var rw row
		if err := rs.Scan(&rw.id, &rw.loader, &rw.ns, &rw.key); err != nil {
			return nil, sqlErrorf("outbox: select: %w", err)
		}
		rows = append(rows, rw)
	}
	if err := rs.Err(); err != nil {
		return nil, sqlErrorf("outbox: select: %w", err)
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
		return sqlErrorf("outbox: delete: %w", err)
	}
	defer stmt.Close()
	for _, id := range ids {
		if _, err := stmt.ExecContext(ctx, id); err != nil {
			return sqlErrorf("outbox: delete: %w", err)
		}
	}
	return nil
}
