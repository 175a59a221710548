package cdc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Relay follows the binlog of one MySQL/MariaDB server and invalidates the
// keys of the rows that change, in the Targets its Rules name. Run it in
// every process that may carry it: the relays of one Name elect a leader
// and the others wait as standbys.
type Relay struct {
	db     *sql.DB
	dsn    *mysql.Config
	s      settings
	rules  map[string]map[string][]rule // schema → table → rules
	tables int                          // tables with a rule
	// targets are the distinct Targets of the rules; a batch holds keys by
	// index in it.
	targets []Target

	stats counters
	// repeats are the second invalidations Options.Reinvalidate asks for.
	repeats chan repeat

	mu sync.Mutex // protects the fields below (read by Stats)
	// applied is the position up to which every invalidation is applied;
	// saved the last checkpoint written, at savedAt.
	applied Position
	saved   Position
	savedAt time.Time
	server  Position  // the server's position at the last poll
	since   time.Time // when the current leadership term began
}

// rule is a Rule with its target index.
type rule struct {
	Rule
	target int
}

// New returns a relay that reads the binlog of the server dsn names (a
// go-sql-driver DSN; its database is the default Schema of the rules and
// holds the checkpoint table) and applies rules. The DSN's user needs
// REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: BINLOG MONITOR) on
// *.*, and CREATE, SELECT, INSERT and UPDATE on the checkpoint table. opts
// may be nil for defaults. New checks its arguments only; Run checks the
// server.
func New(dsn string, rules []Rule, opts *Options) (*Relay, error) {
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("cdc: DSN: %w", err)
	}
	if cfg.Net != "tcp" {
		return nil, fmt.Errorf("cdc: DSN: the binlog is read over TCP, not %q", cfg.Net)
	}
	if cfg.DBName == "" {
		return nil, errors.New("cdc: DSN names no database (it holds the checkpoint table)")
	}
	if len(rules) == 0 {
		return nil, errors.New("cdc: no rules")
	}
	r := &Relay{dsn: cfg, s: s, rules: map[string]map[string][]rule{}, repeats: make(chan repeat, 4096)}
	for i, ru := range rules {
		if ru.Schema == "" {
			ru.Schema = cfg.DBName
		}
		switch {
		case ru.Table == "":
			return nil, fmt.Errorf("cdc: rule %d: no Table", i)
		case ru.Target == nil:
			return nil, fmt.Errorf("cdc: rule %d (%s.%s): no Target", i, ru.Schema, ru.Table)
		case (ru.KeyColumn == "") == (ru.Key == nil):
			return nil, fmt.Errorf("cdc: rule %d (%s.%s): set exactly one of KeyColumn and Key", i, ru.Schema, ru.Table)
		}
		byTable := r.rules[ru.Schema]
		if byTable == nil {
			byTable = map[string][]rule{}
			r.rules[ru.Schema] = byTable
		}
		if byTable[ru.Table] == nil {
			r.tables++
		}
		byTable[ru.Table] = append(byTable[ru.Table], rule{Rule: ru, target: r.targetIndex(ru.Target)})
	}
	r.db, err = sql.Open("mysql", dsn)
	if err != nil {
		return nil, fmt.Errorf("cdc: %w", err)
	}
	r.db.SetMaxOpenConns(4)
	return r, nil
}

// targetIndex returns the index of t in r.targets, adding it if new.
// Targets of a type that cannot be compared are never shared.
func (r *Relay) targetIndex(t Target) int {
	if reflect.TypeOf(t).Comparable() {
		for i, u := range r.targets {
			if reflect.TypeOf(u) == reflect.TypeOf(t) && u == t {
				return i
			}
		}
	}
	r.targets = append(r.targets, t)
	return len(r.targets) - 1
}

// Close releases the relay's connection pool; call it after Run returned.
func (r *Relay) Close() error { return r.db.Close() }

// Run follows the binlog until ctx ends, then returns its cause. It first
// checks the server (returning an error wrapping ErrSettings if it cannot
// be followed), then campaigns for leadership: while another relay of the
// same Name leads, it waits as a standby; when it leads, it resumes from the
// checkpoint, or, on the very first start, from the server's current
// position (nothing before it is replayed). It reconnects (with backoff)
// across network errors, binlog rotations and server restarts. It also
// returns when a Target is closed, and with ErrRule when a rule cannot be
// applied to a row (its column is missing, its Key func failed): it stops
// rather than skip an invalidation.
//
// With Options.StatusRedis it publishes its status meanwhile, and when it
// returns an error other than ctx's, a record saying so.
func (r *Relay) Run(ctx context.Context) error {
	if r.s.statusRedis == nil {
		return r.run(ctx)
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.publishStatus(pctx) }()
	err := r.run(ctx)
	stop()
	<-done
	if err != nil && ctx.Err() == nil {
		r.publishStopped(err)
	}
	return err
}

// run is Run without the status.
func (r *Relay) run(ctx context.Context) error {
	bo := newBackoff(100*time.Millisecond, r.s.maxBackoff)
	var src source
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		src, err = checkSource(c, r.db, r.s)
		cancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrSettings) || ctx.Err() != nil {
			return err
		}
		r.s.logger.Warn("cdc: cannot check the source; retrying", "relay", r.s.name, "error", err)
		if err := bo.wait(ctx); err != nil {
			return err
		}
	}
	for {
		t, err := campaign(ctx, r.db, r.s, newBackoff(100*time.Millisecond, r.s.maxBackoff))
		if err != nil {
			return err
		}
		err = r.lead(ctx, t, src)
		t.close()
		r.stats.leader.Store(false)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if fatal(err) {
			return err
		}
		r.s.logger.Warn("cdc: leadership ended; campaigning again", "relay", r.s.name, "error", err)
		if err := bo.wait(ctx); err != nil {
			return err
		}
	}
}

// lead runs one term: from the checkpoint, stream and apply until the
// lock is lost or ctx ends.
func (r *Relay) lead(ctx context.Context, t *term, src source) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go t.watch(ctx, r.s.lockPoll, cancel)

	c, done := context.WithTimeout(ctx, 10*time.Second)
	from, err := r.startPosition(c, t, src)
	done()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.applied, r.saved, r.savedAt = from, from, time.Now()
	r.since = r.savedAt
	r.mu.Unlock()
	r.stats.leader.Store(true)
	r.stats.terms.Add(1)
	r.s.logger.Info("cdc: leading", "relay", r.s.name, "from", from.String())

	go r.pollServer(ctx, src)
	if r.s.reinvalidate > 0 {
		go r.reinvalidate(ctx)
	}
	bo := newBackoff(100*time.Millisecond, r.s.maxBackoff)
	for {
		started := time.Now()
		err := r.stream(ctx, t, from)
		from = r.appliedPosition()
		if ctx.Err() != nil {
			if !errors.Is(context.Cause(ctx), errLostLock) {
				r.finalSave(t, from)
			}
			return context.Cause(ctx)
		}
		if fatal(err) {
			return err
		}
		r.stats.reconnects.Add(1)
		r.s.logger.Warn("cdc: binlog stream ended; reconnecting", "relay", r.s.name, "from", from.String(), "error", err.Error()) // go-mysql errors format their stack with %+v
		if time.Since(started) > 10*time.Second {
			bo.reset() // the last stream was healthy for a while
		}
		if err := bo.wait(ctx); err != nil {
			continue // ctx ended: handled above
		}
	}
}

// fatal reports the errors no retry can cure: Run returns them.
func fatal(err error) bool {
	return errors.Is(err, ErrSettings) || errors.Is(err, ErrRule) || errors.Is(err, errClosedTarget)
}

// startPosition is the checkpoint, or the server's current position (saved
// at once as the first checkpoint, so that a crash before the next save
// does not skip what was written in between).
func (r *Relay) startPosition(ctx context.Context, t *term, src source) (Position, error) {
	if err := t.createTable(ctx); err != nil {
		return Position{}, err
	}
	p, ok, err := t.load(ctx)
	if err != nil || ok {
		if ok && p.isGTID() != src.gtid {
			return Position{}, fmt.Errorf("%w: the checkpoint %s does not match the relay's mode (GTIDs %v)", ErrSettings, p, src.gtid)
		}
		return p, err
	}
	p, err = t.current(ctx, r.s.flavor, src.gtid)
	if err != nil {
		return Position{}, err
	}
	if err := t.save(ctx, p); err != nil {
		return Position{}, err
	}
	r.s.logger.Info("cdc: no checkpoint: starting at the server's current position", "relay", r.s.name, "position", p.String())
	return p, nil
}

// finalSave writes the applied position when the relay stops cleanly.
func (r *Relay) finalSave(t *term, p Position) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.mu.Lock()
	same := r.saved == p
	r.mu.Unlock()
	if !same && t.save(ctx, p) == nil {
		r.noteSaved(p)
	}
}

func (r *Relay) appliedPosition() Position {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

func (r *Relay) noteSaved(p Position) {
	r.mu.Lock()
	r.saved, r.savedAt = p, time.Now()
	r.mu.Unlock()
	r.stats.checkpoints.Add(1)
}

// pollServer reads the server's current position every second, for
// Stats.Behind.
func (r *Relay) pollServer(ctx context.Context, src source) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, time.Second)
		p, err := current(c, r.db, r.s.flavor, src.gtid)
		cancel()
		if err == nil {
			r.mu.Lock()
			r.server = p
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
