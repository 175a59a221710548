package writebehind

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Flusher applies a Counter's logged deltas to MySQL: it reads each
// shard's log through a consumer group, sums a batch per key, calls the
// ApplyFunc and records the batch's last entry in the applied table in one
// transaction, then acknowledges the entries in Redis. Any number of
// flushers, in one process or many, may run for one counter; every delta
// is applied exactly once across crashes (see planBatch).
//
// Run it (or call FlushOnce) from one goroutine; use more Flushers for
// more parallelism.
type Flusher struct {
	c        *Counter
	db       *sql.DB
	apply    ApplyFunc
	o        FlusherOptions // defaults filled in
	table    string         // quoted
	selectQ  string
	updateQ  string
	insertQ  string
	logger   *slog.Logger
	prom     *flusherProm
	stats    flusherStats
	consumer string

	mu       sync.Mutex // serializes passes; protects the fields below
	ready    []bool     // per shard: group created, applied row inserted
	cursors  []string   // per shard: where the next XAUTOCLAIM starts
	lastReap time.Time  // when idle consumers were last deleted
}

// NewFlusher returns a Flusher of c's log that applies batches to db with
// apply. The applied table (FlusherOptions.Table) must exist: see Migrate.
func (c *Counter) NewFlusher(db *sql.DB, apply ApplyFunc, opts *FlusherOptions) (*Flusher, error) {
	if db == nil || apply == nil {
		return nil, errors.New("writebehind: NewFlusher needs a *sql.DB and an ApplyFunc")
	}
	var o FlusherOptions
	if opts != nil {
		o = *opts
	}
	table, err := quoteTable(o.Table)
	if err != nil {
		return nil, err
	}
	if o.Group == "" {
		o.Group = "flushers"
	}
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d-%x", host, os.Getpid(), rand.Uint32())
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.BatchSize == 0 {
		o.BatchSize = 10000
	}
	def(&o.Interval, time.Second)
	def(&o.ClaimIdle, 30*time.Second)
	def(&o.ApplyTimeout, 30*time.Second)
	def(&o.MinBackoff, 100*time.Millisecond)
	def(&o.MaxBackoff, 5*time.Second)
	def(&o.StatsInterval, time.Second)
	if o.BatchSize < 0 || o.Interval < 0 || o.ClaimIdle < 0 || o.ApplyTimeout < 0 ||
		o.MinBackoff < 0 || o.MaxBackoff < o.MinBackoff || o.StatsInterval < 0 {
		return nil, errors.New("writebehind: negative FlusherOptions duration or size (or MaxBackoff < MinBackoff)")
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	f := &Flusher{
		c: c, db: db, apply: apply, o: o, table: table, logger: logger, consumer: o.Consumer,
		selectQ: "SELECT last_ms, last_seq FROM " + table + " WHERE counter = ? AND shard = ? FOR UPDATE",
		updateQ: "UPDATE " + table + " SET last_ms = ?, last_seq = ?, entries = entries + ?, losses = losses + ? WHERE counter = ? AND shard = ?",
		insertQ: "INSERT IGNORE INTO " + table + " (counter, shard) VALUES (?, ?)",
		ready:   make([]bool, c.shards),
		cursors: make([]string, c.shards),
	}
	for i := range f.cursors {
		f.cursors[i] = "0-0"
	}
	if o.Registerer != nil {
		if f.prom, err = newFlusherProm(o.Registerer, c.name); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Consumer returns the flusher's consumer name in the group.
func (f *Flusher) Consumer() string { return f.consumer }

// Run flushes until ctx ends, then returns ctx's error. It makes a pass
// every Interval, at once after a pass that found a full batch (it is
// behind), and backs off after a failed pass (MySQL or Redis down); deltas
// keep accumulating in Redis meanwhile. The longer the Interval, the more
// increments of one key a batch sums into one row write.
func (f *Flusher) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	var nextStats time.Time
	for {
		stats := !time.Now().Before(nextStats)
		_, full, err := f.pass(ctx, stats)
		if stats {
			nextStats = time.Now().Add(f.o.StatsInterval)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var wait time.Duration
		switch {
		case err != nil:
			backoff = min(max(2*backoff, f.o.MinBackoff), f.o.MaxBackoff)
			wait = backoff/2 + rand.N(backoff/2+1)
			f.logger.Warn("writebehind: flush pass failed", "counter", f.c.name, "err", err, "retry_in", wait)
		case full:
			backoff = 0 // behind: the next pass at once
		default:
			backoff, wait = 0, f.o.Interval
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// FlushOnce makes one pass over every shard — one batch each at most — and
// refreshes the Pending and Lag gauges. It returns the number of calls of
// Add applied and the errors of the shards that failed (the others were
// flushed).
func (f *Flusher) FlushOnce(ctx context.Context) (int, error) {
	n, _, err := f.pass(ctx, true)
	return n, err
}

// pass flushes one batch of every shard; full reports that some shard had
// a full batch (more is waiting).
func (f *Flusher) pass(ctx context.Context, refresh bool) (total int, full bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	// Start at a random shard: flushers of one counter then meet less often
	// on the same shard at the same time.
	start := rand.N(f.c.shards)
	for i := range f.c.shards {
		s := (start + i) % f.c.shards
		n, done, err := f.flushShard(ctx, s)
		total += n
		full = full || done >= f.o.BatchSize
		if err != nil {
			f.stats.errors.Add(1)
			if f.prom != nil {
				f.prom.errors.WithLabelValues(f.c.name).Inc()
			}
			errs = append(errs, fmt.Errorf("shard %d: %w", s, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	if refresh && ctx.Err() == nil {
		if err := f.refreshStats(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if reapAfter := 10 * f.o.ClaimIdle; ctx.Err() == nil && time.Since(f.lastReap) >= reapAfter {
		f.lastReap = time.Now()
		if err := f.reap(ctx, reapAfter); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return total, full, fmt.Errorf("writebehind: flushing %s: %w", f.c.name, errors.Join(errs...))
	}
	return total, full, nil
}

// prepare creates shard s's consumer group (from the start of its log) and
// its row in the applied table, once per flusher, and again after Redis
// lost the group.
func (f *Flusher) prepare(ctx context.Context, s int) error {
	if f.ready[s] {
		return nil
	}
	err := f.c.rdb.XGroupCreateMkStream(ctx, f.c.streamKey(s), f.o.Group, "0").Err()
	if err != nil && !isBusyGroup(err) {
		return fmt.Errorf("creating consumer group: %w", err)
	}
	if _, err := f.db.ExecContext(ctx, f.insertQ, f.c.id, s); err != nil {
		return fmt.Errorf("inserting applied row: %w", err)
	}
	f.ready[s] = true
	return nil
}

// flushShard applies at most one batch of shard s. It returns the calls
// of Add applied and the log entries done with (applied or found applied
// before): a full batch of those means more is waiting. Entries read but
// waiting behind a gap do not count, or Run would spin until they can go.
func (f *Flusher) flushShard(ctx context.Context, s int) (applied, done int, err error) {
	if err := f.prepare(ctx, s); err != nil {
		return 0, 0, err
	}
	entries, err := f.read(ctx, s)
	if isNoGroup(err) {
		// Redis lost the group (restarted empty): create it again next pass,
		// and claim from the start of its new pending list.
		f.ready[s], f.cursors[s] = false, "0-0"
	}
	if err != nil || len(entries) == 0 {
		return 0, 0, err
	}

	p, err := f.commit(ctx, s, entries)
	if err != nil {
		return 0, 0, err
	}
	if p.losses > 0 {
		f.stats.losses.Add(uint64(p.losses))
		if f.prom != nil {
			f.prom.losses.WithLabelValues(f.c.name).Add(float64(p.losses))
		}
		f.logger.Error("writebehind: Redis lost log entries that were already applied (restarted without its last writes); deltas counted in that window and not yet flushed are lost",
			"counter", f.c.name, "shard", s)
	}
	if afterCommit != nil {
		afterCommit()
	}
	finished := append(p.apply, p.skip...)
	done = len(finished)
	if err := f.ack(ctx, s, finished); err != nil {
		// Committed: the entries stay pending, and the next read finds them
		// at or below the applied id and only acknowledges them.
		return p.calls, done, fmt.Errorf("acknowledging %d committed entries: %w", done, err)
	}
	f.stats.skipped.Add(uint64(len(p.skip)))
	if len(p.apply) > 0 && f.o.OnFlushed != nil {
		if err := f.guard(func() error { return f.o.OnFlushed(ctx, sumByKey(p.apply)) }); err != nil {
			f.logger.Warn("writebehind: OnFlushed failed", "counter", f.c.name, "err", err)
			return p.calls, done, fmt.Errorf("OnFlushed: %w", err)
		}
	}
	return p.calls, done, nil
}

// read returns, sorted by id, up to about BatchSize entries of shard s:
// this flusher's own pending ones (delivered before and not acknowledged:
// a failed batch, or the part after a gap), entries idle for ClaimIdle in
// other flushers' pending lists (a dead flusher's), and new ones.
func (f *Flusher) read(ctx context.Context, s int) ([]entry, error) {
	stream, batch := f.c.streamKey(s), int64(f.o.BatchSize)
	pipe := f.c.rdb.Pipeline()
	own := pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: f.o.Group, Consumer: f.consumer, Streams: []string{stream, "0"}, Count: batch, Block: -1,
	})
	claim := pipe.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: stream, Group: f.o.Group, Consumer: f.consumer, MinIdle: f.o.ClaimIdle, Start: f.cursors[s], Count: batch,
	})
	if _, err := pipe.Exec(ctx); err != nil && !isNil(err) {
		return nil, err
	}
	var msgs []redis.XMessage
	if streams, err := own.Result(); err == nil && len(streams) > 0 {
		msgs = append(msgs, streams[0].Messages...)
	}
	claimed, next, err := claim.Result()
	if err != nil && !isNil(err) {
		return nil, err
	}
	f.cursors[s] = next
	if next == "" {
		f.cursors[s] = "0-0"
	}
	f.stats.claimed.Add(uint64(len(claimed)))
	if f.prom != nil && len(claimed) > 0 {
		f.prom.claimed.WithLabelValues(f.c.name).Add(float64(len(claimed)))
	}
	msgs = append(msgs, claimed...)
	if room := batch - int64(len(msgs)); room > 0 {
		streams, err := f.c.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: f.o.Group, Consumer: f.consumer, Streams: []string{stream, ">"}, Count: room, Block: -1,
		}).Result()
		if err != nil && !isNil(err) {
			return nil, err
		}
		if len(streams) > 0 {
			msgs = append(msgs, streams[0].Messages...)
		}
	}

	seen := make(map[string]bool, len(msgs))
	entries := make([]entry, 0, len(msgs))
	for _, m := range msgs {
		if seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		e, err := parseEntry(m)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].id.less(entries[j].id) })
	return entries, nil
}

// parseEntry reads a log entry written by add.lua.
func parseEntry(m redis.XMessage) (entry, error) {
	id, err := parseID(m.ID)
	if err != nil {
		return entry{}, err
	}
	bad := func(why string) (entry, error) {
		return entry{}, fmt.Errorf("writebehind: log entry %s is not one the add script wrote (%s); was it deleted or written by something else?", m.ID, why)
	}
	p, _ := m.Values["p"].(string)
	prev, err := parseID(p)
	if err != nil {
		return bad("no p")
	}
	n, _ := m.Values["n"].(string)
	calls, err := strconv.Atoi(n)
	if err != nil {
		return bad("no n")
	}
	e := entry{id: id, prev: prev, raw: m.ID, calls: calls, deltas: make([]Delta, 0, len(m.Values)-2)}
	for f, v := range m.Values {
		key, ok := strings.CutPrefix(f, "+")
		if !ok {
			continue
		}
		s, _ := v.(string)
		d, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return bad("delta " + s)
		}
		e.deltas = append(e.deltas, Delta{Key: key, Delta: d})
	}
	return e, nil
}

// commit runs one batch's transaction: lock the shard's applied row, plan
// the batch against it, apply, record the new last id, commit.
func (f *Flusher) commit(ctx context.Context, s int, entries []entry) (plan, error) {
	ctx, cancel := context.WithTimeout(ctx, f.o.ApplyTimeout)
	defer cancel()
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		return plan{}, err
	}
	defer tx.Rollback() // after Commit: ErrTxDone, ignored
	var last streamID
	if err := tx.QueryRowContext(ctx, f.selectQ, f.c.id, s).Scan(&last.ms, &last.seq); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			f.ready[s] = false // someone deleted the row: insert it again next pass
		}
		return plan{}, fmt.Errorf("reading the applied id: %w", err)
	}
	p := planBatch(last, entries)
	if len(p.apply) == 0 {
		return p, nil // nothing new; tx rolls back
	}
	batch := sumByKey(p.apply)
	if len(batch) > 0 {
		if err := f.guard(func() error { return f.apply(ctx, tx, batch) }); err != nil {
			return plan{}, fmt.Errorf("apply: %w", err)
		}
	}
	calls := p.calls
	if _, err := tx.ExecContext(ctx, f.updateQ, p.last.ms, p.last.seq, calls, p.losses, f.c.id, s); err != nil {
		return plan{}, fmt.Errorf("recording the applied id: %w", err)
	}
	if err := tx.Commit(); err != nil {
		// Maybe committed (the reply was lost): the entries stay pending and
		// the next batch's read of the applied id tells.
		return plan{}, fmt.Errorf("commit: %w", err)
	}
	f.stats.applied.Add(uint64(calls))
	f.stats.batches.Add(1)
	f.stats.rows.Add(uint64(len(batch)))
	if f.prom != nil {
		f.prom.flushed.WithLabelValues(f.c.name).Add(float64(calls))
		f.prom.batches.WithLabelValues(f.c.name).Inc()
		f.prom.batchEntries.WithLabelValues(f.c.name).Observe(float64(calls))
		f.prom.batchRows.WithLabelValues(f.c.name).Observe(float64(len(batch)))
	}
	return p, nil
}

// afterCommit, when set (by tests, before any flusher runs), is called
// between a batch's commit and its acknowledgement: where a kill leaves
// committed entries pending.
var afterCommit func()

// ackArgs is about how many arguments one run of the ack script takes at
// most: a script blocks Redis while it runs, and an entry may hold up to
// 1,000 keys.
const ackArgs = 20000

// ack acknowledges done (committed or found applied) and takes their
// deltas off the pending hash, in chunks of about ackArgs arguments.
func (f *Flusher) ack(ctx context.Context, s int, done []entry) error {
	keys := []string{f.c.pendingKey(s), f.c.streamKey(s)}
	for len(done) > 0 {
		args := []any{f.o.Group}
		n := 0
		for _, e := range done {
			if n > 0 && len(args)+2+2*len(e.deltas) > ackArgs {
				break
			}
			args = append(args, e.raw, len(e.deltas))
			for _, d := range e.deltas {
				args = append(args, d.Key, strconv.FormatInt(-d.Delta, 10))
			}
			n++
		}
		done = done[n:]
		if err := ackScript.Run(ctx, f.c.rdb, keys, args...).Err(); err != nil {
			return err
		}
	}
	return nil
}

// guard runs user code, turning a panic into a *PanicError.
func (f *Flusher) guard(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return fn()
}

// reap deletes, in every shard's group, the consumers with nothing pending
// that have been idle for idle (dead flushers' names), at most once per
// that long.
func (f *Flusher) reap(ctx context.Context, idle time.Duration) error {
	for s := range f.c.shards {
		n, err := reapScript.Run(ctx, f.c.rdb, []string{f.c.streamKey(s)}, f.o.Group, idle.Milliseconds(), f.consumer).Int()
		if err != nil && !isNoGroup(err) && !isNoSuchKey(err) {
			return fmt.Errorf("deleting idle consumers of shard %d: %w", s, err)
		}
		if n > 0 {
			f.logger.Info("writebehind: deleted idle consumers with nothing pending", "counter", f.c.name, "shard", s, "deleted", n)
		}
	}
	return nil
}

// refreshStats reads every shard's pending count and oldest unapplied
// entry: XINFO GROUPS and XPENDING in one pipeline, one XRANGE more for a
// shard whose oldest entry was never delivered.
func (f *Flusher) refreshStats(ctx context.Context) error {
	type shard struct {
		groups  *redis.XInfoGroupsCmd
		pending *redis.XPendingCmd
	}
	shards := make([]shard, f.c.shards)
	pipe := f.c.rdb.Pipeline()
	for s := range shards {
		shards[s] = shard{pipe.XInfoGroups(ctx, f.c.streamKey(s)), pipe.XPending(ctx, f.c.streamKey(s), f.o.Group)}
	}
	pipe.Exec(ctx) // errors are read per command below
	var total int64
	var oldest streamID
	found := false
	note := func(id string) {
		if v, err := parseID(id); err == nil && (!found || v.less(oldest)) {
			oldest, found = v, true
		}
	}
	for s, sh := range shards {
		groups, err := sh.groups.Result()
		if err != nil {
			if isNil(err) || isNoGroup(err) || isNoSuchKey(err) {
				continue
			}
			return fmt.Errorf("writebehind: stats of %s: %w", f.c.name, err)
		}
		for _, g := range groups {
			if g.Name != f.o.Group {
				continue
			}
			undelivered := max(g.Lag, 0)
			total += g.Pending + undelivered
			if pend, err := sh.pending.Result(); err == nil && pend.Count > 0 {
				note(pend.Lower)
			} else if undelivered > 0 {
				next, err := f.c.rdb.XRangeN(ctx, f.c.streamKey(s), "("+g.LastDeliveredID, "+", 1).Result()
				if err == nil && len(next) > 0 {
					note(next[0].ID)
				}
			}
		}
	}
	var lag time.Duration
	if found {
		lag = max(time.Since(time.UnixMilli(int64(oldest.ms))), 0)
	}
	f.stats.pending.Store(total)
	f.stats.lag.Store(int64(lag))
	if f.prom != nil {
		f.prom.pending.WithLabelValues(f.c.name).Set(float64(total))
		f.prom.lag.WithLabelValues(f.c.name).Set(lag.Seconds())
	}
	return nil
}
