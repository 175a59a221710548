package outbox_test

import (
	"cmp"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/outbox"
)

var (
	campaignFor  = flag.Duration("outbox.campaign", 0, "how long the outbox fault campaign injects faults (0: the short CI run)")
	campaignSeed = flag.Uint64("outbox.seed", 0, "seed of the outbox fault campaign (0: drawn and printed)")
)

// shortCampaign is how long CI's run injects faults; the drain and the
// checks after it take a few seconds more.
const shortCampaign = 6 * time.Second

// The outbox under a randomized fault schedule: two services share one
// outbox table, each with loaders of the same names under its own Prefix,
// each loader with its own Redis client behind its own fault proxy. Writers
// commit data changes with their invalidations (and roll some back);
// readers keep entries cached; two relays per service run all along. The
// schedule, drawn from a seed, kills relays (also between an Invalidate and
// its commit), takes one loader's Redis down at a time (blackhole, refused
// or reset connections), loses and delays replies. Then the faults stop
// and the relays drain the table, and the invariants are checked:
//
//   - no row left: every committed row applied and deleted, exactly once;
//   - 0 lost invalidations: every committed write's key was invalidated, in
//     its own namespace, by an Invalidate that started after the write's
//     COMMIT;
//   - 0 stale entries: every key's Get answers the database's version.
func TestFaultCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("fault campaign")
	}
	seed := *campaignSeed
	if seed == 0 {
		seed = rand.Uint64() >> 1
	}
	length := cmp.Or(*campaignFor, shortCampaign)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay the schedule: go test ./outbox -run TestFaultCampaign -outbox.seed=%d -outbox.campaign=%v", seed, length)
		}
	})
	t.Logf("seed %d, faults for %v", seed, length)
	c := newCampaign(t, seed)
	c.run(length)
}

// version is a campaign value: the row's version.
type version struct{ V int64 }

func (v version) CacheVersion() int64 { return v.V }

const (
	campaignKeys   = 16 // ids per loader
	relaysPerSvc   = 2
	killAfterApply = 0.02 // chance that a relay dies right after an Invalidate, before its commit
	// recoveryWindow: a loader whose fault ended this recently is not
	// counted among the unfaulted ones in the lag figures (relay backoff up
	// to 500ms, then the breaker's cooldown).
	recoveryWindow = 3 * time.Second
)

type campaign struct {
	t      *testing.T
	db     *sql.DB
	ob     *outbox.Outbox
	svcs   []*service
	all    []*cloader
	chaos  *rand.Rand // the schedule, drawn by one goroutine
	rmu    sync.Mutex // protects rng
	rng    *rand.Rand // draws on other goroutines (relay kills)
	ledger ledger

	slots []*slot

	// figures
	committed, rolledBack, writeErrors atomic.Int64
	reads, readErrors                  atomic.Int64
	killed, killedAfterApply           atomic.Int64
	outages                            map[string]int
	replyFaultPeriods                  int
	// At the end of each outage, the age of the oldest pending row: the
	// down loader's, and the worst of the loaders without a fault in the
	// last recoveryWindow (head-of-line blocking would make theirs grow
	// like the down one's; a loader whose fault ended shortly before may
	// still be in its relay backoff or its breaker's cooldown).
	downLagMax, othersLagMax time.Duration
	lastFault                map[*cloader]time.Time // when each loader's latest fault ended (or will)
	applied, failedAttempts  atomic.Uint64
}

// service is one of the two services sharing the outbox table.
type service struct {
	name    string
	data    string // its table: (name, id) → version
	loaders []*cloader
}

// cloader is a campaign loader with its own Redis client behind its proxy.
type cloader struct {
	svc   *service
	l     *cache.Loader[version]
	proxy *faultproxy.Proxy
	ns    string
}

// ledger is what the checks compare: per namespace and key, when the
// latest committed write called COMMIT and when the latest successful
// Invalidate started.
type ledger struct {
	mu         sync.Mutex // protects the maps
	commitCall map[string]time.Time
	inval      map[string]time.Time
}

func (l *ledger) committed(ns, key string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at.After(l.commitCall[ns+"\x00"+key]) {
		l.commitCall[ns+"\x00"+key] = at
	}
}

func (l *ledger) invalidated(ns string, keys []string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if at.After(l.inval[ns+"\x00"+k]) {
			l.inval[ns+"\x00"+k] = at
		}
	}
}

func newCampaign(t *testing.T, seed uint64) *campaign {
	db := realMySQL(t)
	direct := realRedis(t)
	c := &campaign{
		lastFault: map[*cloader]time.Time{},
		t:         t, db: db, ob: newOutbox(t, db),
		chaos:   rand.New(rand.NewPCG(seed, 1)),
		rng:     rand.New(rand.NewPCG(seed, 2)),
		ledger:  ledger{commitCall: map[string]time.Time{}, inval: map[string]time.Time{}},
		outages: map[string]int{},
	}
	for si, loaders := range [][]string{{"user", "item", "order"}, {"user", "item"}} {
		s := &service{name: fmt.Sprintf("svc%d", si)}
		s.data = uniqueTable(t, db, "outbox_campaign")
		_, err := db.Exec("CREATE TABLE " + s.data + " (name VARCHAR(16) NOT NULL, id INT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (name, id))")
		require.NoError(t, err)
		prefix := testenv.Prefix(t, direct, "outboxcampaign:")
		for _, name := range loaders {
			for id := range campaignKeys {
				_, err := db.Exec("INSERT INTO "+s.data+" VALUES (?, ?, 1)", name, id)
				require.NoError(t, err)
			}
			p, err := faultproxy.Start(testenv.RedisAddr())
			require.NoError(t, err)
			t.Cleanup(func() { p.Close() })
			rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true})
			t.Cleanup(func() { rdb.Close() })
			table := s.data
			l, err := cache.New(rdb, name, func(ctx context.Context, id string) (version, error) {
				var v version
				err := db.QueryRowContext(ctx, "SELECT version FROM "+table+" WHERE name = ? AND id = ?", name, id).Scan(&v.V)
				return v, err
			}, &cache.Options{Prefix: prefix, TTL: 10 * time.Minute, DisableEarlyRefresh: true})
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			cl := &cloader{svc: s, l: l, proxy: p, ns: outbox.Namespace(l)}
			s.loaders = append(s.loaders, cl)
			c.all = append(c.all, cl)
		}
		c.svcs = append(c.svcs, s)
	}
	return c
}

// slot is where one relay of a service runs; a killed relay is replaced
// by a new one, as a restarted process would start it.
type slot struct {
	svc    *service
	mu     sync.Mutex // protects cancel, relay
	cancel context.CancelFunc
	relay  *outbox.Relay
	done   chan struct{}
}

// probe is a loader as one relay instance sees it: it records successful
// invalidations and may kill its relay right after one.
type probe struct {
	*cloader
	c    *campaign
	kill func()
}

func (p probe) Name() string        { return p.l.Name() }
func (p probe) Key(k string) string { return p.l.Key(k) }

func (p probe) Invalidate(ctx context.Context, keys ...string) error {
	start := time.Now()
	if err := p.l.Invalidate(ctx, keys...); err != nil {
		return err
	}
	p.c.ledger.invalidated(p.ns, keys, start)
	p.c.rmu.Lock()
	die := p.c.rng.Float64() < killAfterApply
	p.c.rmu.Unlock()
	if die {
		// Dies between the Invalidate and the commit: the rows come back.
		p.c.killedAfterApply.Add(1)
		p.kill()
	}
	return nil
}

// start runs a new relay in s.
func (c *campaign) start(s *slot) {
	ctx, cancel := context.WithCancel(context.Background())
	var invs []outbox.Invalidator
	for _, cl := range s.svc.loaders {
		invs = append(invs, probe{cloader: cl, c: c, kill: cancel})
	}
	relay, err := c.ob.NewRelay(invs, &outbox.RelayOptions{
		PollInterval: 10 * time.Millisecond, BatchSize: 16,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	require.NoError(c.t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		relay.Run(ctx)
	}()
	s.mu.Lock()
	s.cancel, s.relay, s.done = cancel, relay, done
	s.mu.Unlock()
}

// stop kills s's relay (if running) and waits for it; its counts are kept.
func (c *campaign) stop(s *slot) {
	s.mu.Lock()
	cancel, relay, done := s.cancel, s.relay, s.done
	s.cancel, s.relay = nil, nil
	s.mu.Unlock()
	if relay == nil {
		return
	}
	cancel()
	<-done
	st := relay.Stats()
	c.applied.Add(st.Applied)
	c.failedAttempts.Add(st.Errors)
}

// restartDead replaces relays that killed themselves after an Invalidate.
func (c *campaign) restartDead() {
	for _, s := range c.slots {
		s.mu.Lock()
		done := s.done
		s.mu.Unlock()
		select {
		case <-done:
			c.stop(s)
			c.start(s)
		default:
		}
	}
}

func (c *campaign) run(length time.Duration) {
	t := c.t
	for _, s := range c.svcs {
		for range relaysPerSvc {
			sl := &slot{svc: s}
			c.start(sl)
			c.slots = append(c.slots, sl)
		}
	}
	stop := make(chan struct{})
	var work sync.WaitGroup
	for range 4 {
		seed := c.chaos.Uint64()
		work.Go(func() { c.writer(seed, stop) })
	}
	for range 4 {
		seed := c.chaos.Uint64()
		work.Go(func() { c.reader(seed, stop) })
	}

	c.schedule(length)

	// Quiescence: faults off, writers and readers stopped, every relay
	// running; the table must drain.
	for _, cl := range c.all {
		require.NoError(t, cl.proxy.Set(faultproxy.Pass, 0))
		cl.proxy.Disarm()
	}
	close(stop)
	work.Wait()
	drainStart := time.Now()
	ok := false
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c.restartDead()
		if rowCount(t, c.db, c.ob.Table()) == 0 {
			ok = true
			break
		}
	}
	drain := time.Since(drainStart)
	for _, s := range c.slots {
		c.stop(s)
	}
	left := rowCount(t, c.db, c.ob.Table())

	// The checks.
	lost := 0
	c.ledger.mu.Lock()
	for k, committedAt := range c.ledger.commitCall {
		if inv, ok := c.ledger.inval[k]; !ok || inv.Before(committedAt) {
			lost++
			if lost <= 5 {
				ns, key, _ := strings.Cut(k, "\x00")
				t.Errorf("lost invalidation: %s key %s committed at %v, last invalidated at %v", ns, key, committedAt.Format(time.StampMicro), inv.Format(time.StampMicro))
			}
		}
	}
	keysWritten := len(c.ledger.commitCall)
	c.ledger.mu.Unlock()
	stale := 0
	ctx := context.Background()
	for _, cl := range c.all {
		for id := range campaignKeys {
			key := strconv.Itoa(id)
			var want int64
			require.NoError(t, c.db.QueryRow("SELECT version FROM "+cl.svc.data+" WHERE name = ? AND id = ?", cl.l.Name(), id).Scan(&want))
			got, err := cl.l.Get(ctx, key)
			require.NoError(t, err)
			if got.V != want {
				stale++
				if stale <= 5 {
					t.Errorf("stale entry: %s key %s has version %d, the database %d", cl.ns, key, got.V, want)
				}
			}
		}
	}
	var lostReplies, resets, delayed uint64
	for _, cl := range c.all {
		s := cl.proxy.Stats()
		lostReplies += s.LostReplies
		resets += s.PipelineResets
		delayed += s.DelayedReplies
	}
	t.Logf("campaign: %v of faults, then %v to drain; %d writes committed (%d keys), %d rolled back, %d write errors; %d reads (%d errors)",
		length, drain.Round(time.Millisecond), c.committed.Load(), keysWritten, c.rolledBack.Load(), c.writeErrors.Load(), c.reads.Load(), c.readErrors.Load())
	t.Logf("faults: %d relays killed at random, %d right after an Invalidate; loader outages %v; %d reply-fault periods: %d replies lost, %d pipeline resets, %d replies delayed",
		c.killed.Load(), c.killedAfterApply.Load(), c.outages, c.replyFaultPeriods, lostReplies, resets, delayed)
	t.Logf("at the end of the outages, the oldest pending row: the down loader's up to %v, the loaders without a fault in the last %v up to %v",
		c.downLagMax.Round(time.Millisecond), recoveryWindow, c.othersLagMax.Round(time.Millisecond))
	t.Logf("relays: %d rows applied, %d failed attempts retried; violations: %d rows left, %d lost invalidations, %d stale entries",
		c.applied.Load(), c.failedAttempts.Load(), left, lost, stale)
	require.True(t, ok, "the outbox did not drain within 90s of the faults stopping (%d rows left)", left)
	require.Zero(t, left, "rows left")
	require.Equal(t, uint64(c.committed.Load()), c.applied.Load(), "every committed row applied (and deleted) exactly once")
	require.Zero(t, lost, "lost invalidations")
	require.Zero(t, stale, "stale entries")
}

// schedule injects faults for length, drawn from the seed.
func (c *campaign) schedule(length time.Duration) {
	var downUntil time.Time
	var down *cloader
	faultsUntil := map[*cloader]time.Time{}
	end := time.Now().Add(length)
	for now := time.Now(); now.Before(end); now = time.Now() {
		c.restartDead()
		if down != nil && now.After(downUntil) {
			c.measureLag(down, now)
			require.NoError(c.t, down.proxy.Set(faultproxy.Pass, 0))
			down = nil
		}
		for cl, until := range faultsUntil {
			if now.After(until) {
				require.NoError(c.t, cl.proxy.SetReplyFaults(faultproxy.ReplyFaults{}))
				delete(faultsUntil, cl)
			}
		}
		switch c.chaos.IntN(10) {
		case 0, 1, 2: // a relay killed at random, replaced at once
			s := c.slots[c.chaos.IntN(len(c.slots))]
			c.stop(s)
			c.killed.Add(1)
			c.start(s)
		case 3, 4: // one loader's Redis down
			if down != nil {
				break
			}
			down = c.all[c.chaos.IntN(len(c.all))]
			mode := []faultproxy.Mode{faultproxy.Blackhole, faultproxy.Refuse, faultproxy.Reset}[c.chaos.IntN(3)]
			c.outages[[]string{"blackhole", "refuse", "reset"}[mode-faultproxy.Blackhole]]++
			require.NoError(c.t, down.proxy.Set(mode, 0))
			downUntil = now.Add(time.Duration(100+c.chaos.IntN(900)) * time.Millisecond)
			c.lastFault[down] = downUntil
		case 5, 6: // replies lost, pipelines reset, replies delayed on one loader's Redis
			cl := c.all[c.chaos.IntN(len(c.all))]
			require.NoError(c.t, cl.proxy.SetReplyFaults(faultproxy.ReplyFaults{
				Seed: c.chaos.Uint64(), Lose: 0.05, PipelineReset: 0.05, Delay: 0.1,
				DelayMin: 20 * time.Millisecond, DelayMax: 200 * time.Millisecond,
			}))
			faultsUntil[cl] = now.Add(time.Duration(200+c.chaos.IntN(600)) * time.Millisecond)
			c.lastFault[cl] = faultsUntil[cl]
			c.replyFaultPeriods++
		case 7: // one lost reply to the next command, whatever it is
			cl := c.all[c.chaos.IntN(len(c.all))]
			cl.proxy.LoseNextReply("")
			c.lastFault[cl] = now
		}
		time.Sleep(time.Duration(20+c.chaos.IntN(200)) * time.Millisecond)
	}
}

// measureLag records the age of the oldest pending row of the down loader
// and of the others.
func (c *campaign) measureLag(down *cloader, now time.Time) {
	skip := map[string]bool{}
	for cl, at := range c.lastFault {
		if cl != down && now.Sub(at) < recoveryWindow {
			skip[cl.ns] = true
		}
	}
	rows, err := c.db.Query("SELECT namespace, TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) FROM " + c.ob.Table() + " GROUP BY namespace")
	require.NoError(c.t, err)
	defer rows.Close()
	for rows.Next() {
		var ns string
		var us int64
		require.NoError(c.t, rows.Scan(&ns, &us))
		lag := time.Duration(us) * time.Microsecond
		switch {
		case ns == down.ns:
			c.downLagMax = max(c.downLagMax, lag)
		case !skip[ns]:
			c.othersLagMax = max(c.othersLagMax, lag)
		}
	}
	require.NoError(c.t, rows.Err())
}

// writer commits data changes with their invalidations; one in ten is
// rolled back. It never invalidates itself: the outbox is the only path.
func (c *campaign) writer(seed uint64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, 3))
	ctx := context.Background()
	for {
		select {
		case <-stop:
			return
		default:
		}
		cl := c.all[rng.IntN(len(c.all))]
		n := 1 + rng.IntN(3)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = strconv.Itoa(rng.IntN(campaignKeys))
		}
		commit := rng.IntN(10) != 0
		if err := c.write(ctx, cl, keys, commit); err != nil {
			c.writeErrors.Add(1)
		}
		time.Sleep(time.Duration(5+rng.IntN(10)) * time.Millisecond) // below the relays' throughput: lag measures blocking, not a backlog
	}
}

func (c *campaign) write(ctx context.Context, cl *cloader, keys []string, commit bool) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, "UPDATE "+cl.svc.data+" SET version = version + 1 WHERE name = ? AND id = ?", cl.l.Name(), k); err != nil {
			return err
		}
	}
	if err := c.ob.Enqueue(ctx, tx, cl.l, keys...); err != nil {
		return err
	}
	if !commit {
		c.rolledBack.Add(1)
		return tx.Rollback()
	}
	at := time.Now()
	if err := tx.Commit(); err != nil {
		return err
	}
	c.committed.Add(int64(len(keys)))
	for _, k := range keys {
		c.ledger.committed(cl.ns, k, at)
	}
	return nil
}

// reader keeps entries cached (Gets fail open under the faults).
func (c *campaign) reader(seed uint64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, 4))
	ctx := context.Background()
	for {
		select {
		case <-stop:
			return
		default:
		}
		cl := c.all[rng.IntN(len(c.all))]
		c.reads.Add(1)
		if _, err := cl.l.Get(ctx, strconv.Itoa(rng.IntN(campaignKeys))); err != nil {
			c.readErrors.Add(1)
		}
		time.Sleep(time.Millisecond)
	}
}
