package cache

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

var (
	campaignFor  = flag.Duration("campaign", 0, "how long the Loader fault campaign injects faults (0: the short CI run)")
	campaignSeed = flag.Uint64("campaign.seed", 0, "seed of the Loader fault campaign (0: drawn and printed)")
)

// The Loader under a randomized fault schedule, on a Redis of its own (so
// that it can be restarted) and the real MariaDB. Several processes —
// Loaders of one namespace, each with its own client behind its own fault
// proxy, half of them batch Loaders — serve readers (Get and GetMany)
// while one writer per process commits rows and tells the cache with
// WriteThrough, Invalidate or InvalidateVersions. Loads are slow readers
// (0–5 ms after the SELECT; now and then 50–250 ms); entries live 1 s, so
// expiry and early refresh happen all along. The schedule, drawn from a
// seed, loses replies after Redis ran the command, resets connections in
// the middle of pipelines, delays replies, takes one process's Redis down
// (blackhole, refused or reset connections), kills clients' connections
// (CLIENT KILL), evicts and corrupts entries, and restarts Redis, which
// keeps nothing. The invariants, checked all along and after the faults
// stop:
//
//   - no stale read: a Get (or GetMany) that starts after a write and its
//     invalidation completed — returned without queueing — never answers
//     an older version;
//   - no error: Gets never return Redis's failures (the database has none);
//   - bounded: every Get returns within campaignGetBound, far below the
//     lease it could otherwise wait out;
//   - once the faults stop and queued invalidations land, no entry differs
//     from the database and no lease is left live;
//   - no goroutine is left behind.
//
// What it cannot inject: a Redis that answers wrongly, clock steps on the
// server, and faults between the database and the loads (see
// TestMySQLDown).
func TestFaultCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("fault campaign")
	}
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) }) // registered first: runs last
	seed := *campaignSeed
	if seed == 0 {
		seed = rand.Uint64() >> 1
	}
	length := cmp.Or(*campaignFor, campaignShort)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay the schedule: go test -run TestFaultCampaign -campaign.seed=%d -campaign=%v", seed, length)
		}
	})
	t.Logf("seed %d, faults for %v", seed, length)
	c := newCampaign(t, seed)
	c.run(length)
}

const (
	campaignShort   = 15 * time.Second
	campaignProcs   = 4
	campaignReaders = 12
	// campaignLease is longer than any Get may take, so that a Get waiting
	// out an orphaned lease breaks campaignGetBound.
	campaignLease    = 10 * time.Second
	campaignGetBound = 3 * time.Second
	campaignTimeout  = 100 * time.Millisecond
)

// campaign is one run: the processes, the database and what was observed.
type campaign struct {
	t      *testing.T
	srv    *testenv.LocalRedis
	direct *redis.Client // to srv, bypassing the proxies
	db     *raceDB
	prefix string
	procs  []*cproc
	chaos  *rand.Rand // the schedule; one goroutine draws from it

	// floor[id] is the highest version of row id whose write completed:
	// committed, and its invalidation (or write-through) returned without
	// being queued.
	floor [raceKeys]atomic.Int64

	slowMu sync.Mutex // protects slow
	slow   *rand.Rand // the slow reader's delays

	mu         sync.Mutex // protects the fields below
	violations []string
	lat        []time.Duration
	faults     map[string]int

	gets, getManys, stale, errs               atomic.Int64
	writes, completed, queued, writeThroughQd atomic.Int64
}

// cproc is one process: a Loader with a client of its own behind a proxy.
type cproc struct {
	l     *Loader[raceRow]
	proxy *faultproxy.Proxy
	rdb   *redis.Client
}

func newCampaign(t *testing.T, seed uint64) *campaign {
	srv := testenv.StartRedis(t, testenv.RedisConfig{})
	c := &campaign{
		t:      t,
		srv:    srv,
		direct: srv.Client(t),
		db:     newRaceDB(t, seed),
		chaos:  rand.New(rand.NewPCG(seed, 1)),
		slow:   rand.New(rand.NewPCG(seed, 2)),
		faults: map[string]int{},
	}
	c.prefix = testenv.Prefix(t, c.direct, "campaign:")
	for i := range campaignProcs {
		p, err := faultproxy.Start(srv.Addr)
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		rdb := redis.NewClient(&redis.Options{
			Addr: p.Addr(), ContextTimeoutEnabled: true,
			ClientName: fmt.Sprintf("campaign-%d", i),
		})
		t.Cleanup(func() { rdb.Close() })
		opts := &Options{
			Prefix:       c.prefix,
			TTL:          time.Second,
			RedisTimeout: campaignTimeout,
			LeaseTimeout: campaignLease,
		}
		var l *Loader[raceRow]
		if i%2 == 0 {
			l, err = New(rdb, "items", c.load, opts)
		} else {
			l, err = NewBatch(rdb, "items", c.loadBatch, opts)
		}
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		c.procs = append(c.procs, &cproc{l: l, proxy: p, rdb: rdb})
	}
	return c
}

// pause is the slow reader's delay after a SELECT: 0–5 ms, and one load
// in 50 takes 50–250 ms.
func (c *campaign) pause() time.Duration {
	c.slowMu.Lock()
	defer c.slowMu.Unlock()
	if c.slow.IntN(50) == 0 {
		return time.Duration(50+c.slow.IntN(200)) * time.Millisecond
	}
	return time.Duration(c.slow.Int64N(int64(raceMaxSlow) + 1))
}

func (c *campaign) load(ctx context.Context, key string) (raceRow, error) {
	id, err := strconv.Atoi(key)
	if err != nil {
		return raceRow{}, err
	}
	r, err := c.db.read(ctx, id)
	time.Sleep(c.pause())
	return r, err
}

func (c *campaign) loadBatch(ctx context.Context, keys []string) (map[string]raceRow, error) {
	out := make(map[string]raceRow, len(keys))
	for _, k := range keys {
		id, err := strconv.Atoi(k)
		if err != nil {
			return nil, err
		}
		r, err := c.db.read(ctx, id)
		if err != nil {
			return nil, err
		}
		out[k] = r
	}
	time.Sleep(c.pause())
	return out, nil
}

func (c *campaign) violate(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

func (c *campaign) fault(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults[kind]++
}

func (c *campaign) run(length time.Duration) {
	stop := make(chan struct{})
	var work sync.WaitGroup
	for i := range campaignReaders {
		rng := rand.New(rand.NewPCG(c.chaos.Uint64(), uint64(i)))
		work.Go(func() { c.reader(rng, stop) })
	}
	for i, p := range c.procs {
		rng := rand.New(rand.NewPCG(c.chaos.Uint64(), uint64(100+i)))
		work.Go(func() { c.writer(p, rng, stop) })
	}
	c.schedule(length)
	close(stop)
	work.Wait()
	c.quiesce()
	c.check()
}

// reader Gets (or GetManys) random keys through random processes and
// checks each answer against the floor taken before the call.
func (c *campaign) reader(rng *rand.Rand, stop <-chan struct{}) {
	ctx := context.Background()
	var lat []time.Duration
	defer func() {
		c.mu.Lock()
		c.lat = append(c.lat, lat...)
		c.mu.Unlock()
	}()
	for {
		select {
		case <-stop:
			return
		default:
		}
		p := c.procs[rng.IntN(len(c.procs))]
		if rng.IntN(5) > 0 {
			id := rng.IntN(raceKeys)
			floor := c.floor[id].Load()
			start := time.Now()
			v, err := p.l.Get(ctx, strconv.Itoa(id))
			d := time.Since(start)
			lat = append(lat, d)
			c.gets.Add(1)
			c.answered(id, floor, v, err, d)
			continue
		}
		ids := make([]int, 2+rng.IntN(5))
		keys := make([]string, len(ids))
		floors := make([]int64, len(ids))
		for i := range ids {
			ids[i] = rng.IntN(raceKeys)
			keys[i] = strconv.Itoa(ids[i])
			floors[i] = c.floor[ids[i]].Load()
		}
		start := time.Now()
		m, err := p.l.GetMany(ctx, keys)
		d := time.Since(start)
		c.getManys.Add(1)
		if err != nil {
			c.errs.Add(1)
			c.violate("GetMany %v: %v", keys, err)
			continue
		}
		for i, id := range ids {
			v, ok := m[keys[i]]
			if !ok {
				c.violate("GetMany %v: key %d missing without an error", keys, id)
				continue
			}
			c.answered(id, floors[i], v, nil, d)
		}
	}
}

// answered checks one answer of a Get of id that began when floor was the
// highest completed write's version.
func (c *campaign) answered(id int, floor int64, v raceRow, err error, d time.Duration) {
	switch {
	case err != nil:
		c.errs.Add(1)
		c.violate("Get %d: %v", id, err)
	case v.ID != id:
		c.violate("Get %d answered row %d", id, v.ID)
	case v.Ver < floor:
		c.stale.Add(1)
		c.violate("stale read: Get %d answered version %d; version %d's write completed before it began", id, v.Ver, floor)
	}
	if d > campaignGetBound {
		c.violate("Get %d took %v (bound %v)", id, d.Round(time.Millisecond), campaignGetBound)
	}
}

// writer commits new versions of random rows through its process and tells
// the cache one of three ways. A write is complete when its invalidation
// was not queued; only then does it raise the floor.
func (c *campaign) writer(p *cproc, rng *rand.Rand, stop <-chan struct{}) {
	ctx := context.Background()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		id := rng.IntN(raceKeys)
		key, val := strconv.Itoa(id), fmt.Sprintf("w%d", n)
		var (
			ver  int64
			done bool
		)
		switch how := rng.IntN(20); {
		case how < 10:
			// This goroutine is the process's only writer, so a change in
			// its queued count is this call's.
			before := p.l.Stats().InvalidationsQueued
			r, err := p.l.WriteThrough(ctx, key, func(ctx context.Context) (raceRow, error) {
				return c.db.update(ctx, id, val)
			})
			if err != nil {
				c.violate("WriteThrough %d: %v", id, err)
				continue
			}
			ver = r.Ver
			done = p.l.Stats().InvalidationsQueued == before
			if !done {
				c.writeThroughQd.Add(1)
			}
		default:
			r, err := c.db.update(ctx, id, val)
			if err != nil {
				c.violate("update %d: %v", id, err)
				continue
			}
			ver = r.Ver
			if how < 17 {
				err = p.l.Invalidate(ctx, key)
			} else {
				err = p.l.InvalidateVersions(ctx, KeyVersion{Key: key, Version: r.Ver})
			}
			if err != nil && !errors.Is(err, ErrQueued) {
				c.violate("invalidate %d: %v", id, err)
			}
			done = err == nil
		}
		c.writes.Add(1)
		if done {
			c.completed.Add(1)
			raceStoreMax(&c.floor[id], ver)
		} else {
			c.queued.Add(1)
		}
		time.Sleep(time.Duration(1+rng.IntN(10)) * time.Millisecond)
	}
}

// schedule injects faults for length.
func (c *campaign) schedule(length time.Duration) {
	type until struct {
		p  *cproc
		at time.Time
	}
	var (
		down     *until // the process whose Redis is down, if any
		replies  []until
		restarts int
	)
	end := time.Now().Add(length)
	// Restarts are spread over the run: one in the short run.
	restartEvery := max(length/2, 10*time.Second)
	nextRestart := time.Now().Add(restartEvery / 2)
	for now := time.Now(); now.Before(end); now = time.Now() {
		if down != nil && now.After(down.at) {
			require.NoError(c.t, down.p.proxy.Set(faultproxy.Pass, 0))
			down = nil
		}
		replies = slices.DeleteFunc(replies, func(u until) bool {
			if now.After(u.at) {
				require.NoError(c.t, u.p.proxy.SetReplyFaults(faultproxy.ReplyFaults{}))
				return true
			}
			return false
		})
		if now.After(nextRestart) {
			c.srv.Kill(c.t)
			c.srv.Restart(c.t)
			restarts++
			c.fault("redis restart")
			nextRestart = now.Add(restartEvery)
		}
		p := c.procs[c.chaos.IntN(len(c.procs))]
		switch c.chaos.IntN(12) {
		case 0, 1: // replies lost, pipelines reset, replies delayed
			if slices.ContainsFunc(replies, func(u until) bool { return u.p == p }) {
				break
			}
			require.NoError(c.t, p.proxy.SetReplyFaults(faultproxy.ReplyFaults{
				Seed: c.chaos.Uint64(), Lose: 0.05, PipelineReset: 0.05, Delay: 0.1,
				DelayMin: 20 * time.Millisecond, DelayMax: 200 * time.Millisecond,
			}))
			replies = append(replies, until{p, now.Add(time.Duration(200+c.chaos.IntN(600)) * time.Millisecond)})
			c.fault("reply faults (period)")
		case 2: // one process's Redis down
			if down != nil {
				break
			}
			i := c.chaos.IntN(3)
			require.NoError(c.t, p.proxy.Set([]faultproxy.Mode{faultproxy.Blackhole, faultproxy.Refuse, faultproxy.Reset}[i], 0))
			down = &until{p, now.Add(time.Duration(100+c.chaos.IntN(900)) * time.Millisecond)}
			c.fault([]string{"blackhole", "refuse", "reset"}[i])
		case 3, 4: // the next script's reply lost after it ran
			p.proxy.LoseNextReply([]string{"EVALSHA", ""}[c.chaos.IntN(2)])
			c.fault("lost reply (armed)")
		case 5: // a client connection killed
			if c.killClient() {
				c.fault("client kill")
			}
		case 6, 7: // an entry evicted, as an expiry or maxmemory would
			id := c.chaos.IntN(raceKeys)
			if c.direct.Del(context.Background(), c.procs[0].l.Key(strconv.Itoa(id))).Err() == nil {
				c.fault("eviction")
			}
		case 8: // an entry corrupted
			id := c.chaos.IntN(raceKeys)
			garbage := []string{"garbage", "c2" + strings.Repeat("9", 150), ""}[c.chaos.IntN(3)]
			if c.direct.Set(context.Background(), c.procs[0].l.Key(strconv.Itoa(id)), garbage, time.Minute).Err() == nil {
				c.fault("corruption")
			}
		}
		time.Sleep(time.Duration(20+c.chaos.IntN(150)) * time.Millisecond)
	}
	if down != nil {
		require.NoError(c.t, down.p.proxy.Set(faultproxy.Pass, 0))
	}
	for _, u := range replies {
		require.NoError(c.t, u.p.proxy.SetReplyFaults(faultproxy.ReplyFaults{}))
	}
	for _, p := range c.procs {
		p.proxy.Disarm()
	}
}

// killClient kills one of the processes' connections at random.
func (c *campaign) killClient() bool {
	ctx := context.Background()
	list, err := c.direct.ClientList(ctx).Result()
	if err != nil {
		return false
	}
	var ids []string
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, "name=campaign-") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return false
	}
	return c.direct.Do(ctx, "CLIENT", "KILL", "ID", ids[c.chaos.IntN(len(ids))]).Err() == nil
}

// quiesce waits for queued invalidations and leftover stores to land,
// then closes the processes, which waits for their background work.
func (c *campaign) quiesce() {
	require.Eventually(c.t, func() bool {
		for _, p := range c.procs {
			if p.l.Stats().InvalidationsPending > 0 || p.l.retry.leftovers.n.Load() > 0 {
				return false
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "queued invalidations did not land after the faults stopped")
	for _, p := range c.procs {
		p.l.Close()
	}
}

// check requires the invariants and reports the run's figures.
func (c *campaign) check() {
	t := c.t
	ctx := context.Background()
	now, err := c.direct.Time(ctx).Result()
	require.NoError(t, err)
	var staleEntries, liveLeases int
	for id := range raceKeys {
		want, err := c.db.read(ctx, id)
		require.NoError(t, err)
		raw, err := c.direct.Get(ctx, c.procs[0].l.Key(strconv.Itoa(id))).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		require.NoError(t, err)
		e, err := entry.Decode(raw, 1<<20)
		if err != nil {
			continue // corrupt: the next Get replaces it
		}
		if e.LeaseOwner != "" && e.LeaseDeadline > now.UnixMilli() {
			liveLeases++
			c.violate("key %d: lease of %q live %v after every call returned", id, e.LeaseOwner,
				time.Duration(e.LeaseDeadline-now.UnixMilli())*time.Millisecond)
		}
		if !e.Usable() || !e.FreshAt(now.UnixMilli()) {
			continue
		}
		if e.Negative() {
			staleEntries++
			c.violate("key %d: negative entry for an existing row", id)
			continue
		}
		got, err := c.procs[0].l.decode(e.Payload)
		require.NoError(t, err)
		if got != want {
			staleEntries++
			c.violate("stale entry %d: cached %+v, database %+v", id, got, want)
		}
	}
	requireFreshLoaderSeesDB(t, c.direct, c.db, c.prefix, time.Second)

	c.mu.Lock()
	defer c.mu.Unlock()
	slices.Sort(c.lat)
	at := func(q float64) time.Duration {
		if len(c.lat) == 0 {
			return 0
		}
		return c.lat[min(len(c.lat)-1, int(q*float64(len(c.lat))))].Round(time.Microsecond)
	}
	kinds := make([]string, 0, len(c.faults))
	for k, n := range c.faults {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(kinds)
	var proxied faultproxy.Stats
	for _, p := range c.procs {
		s := p.proxy.Stats()
		proxied.LostReplies += s.LostReplies
		proxied.PipelineResets += s.PipelineResets
		proxied.DelayedReplies += s.DelayedReplies
		proxied.Commands += s.Commands
	}
	st := sumStats(c.loaders())
	t.Logf("faults: %s; proxies: %d commands, %d replies lost, %d pipelines reset, %d replies delayed",
		strings.Join(kinds, ", "), proxied.Commands, proxied.LostReplies, proxied.PipelineResets, proxied.DelayedReplies)
	t.Logf("%d Gets, %d GetManys: p50 %v, p99 %v, p99.9 %v, max %v (Gets)", c.gets.Load(), c.getManys.Load(),
		at(0.5), at(0.99), at(0.999), at(1))
	t.Logf("%d writes: %d complete, %d queued (%d of them WriteThrough)", c.writes.Load(), c.completed.Load(),
		c.queued.Load(), c.writeThroughQd.Load())
	t.Logf("loads %d, hits %d, misses %d, stale sets prevented %d, corrupt %d, redis errors %d, skipped %d, breaker opened %d",
		st.Loads, st.Hits, st.Misses, st.StaleSetsPrevented, st.CorruptEntries, st.RedisErrors, st.RedisSkipped, st.BreakerOpened)
	t.Logf("violations: %d stale reads, %d errors, %d stale entries, %d live leases, %d in all",
		c.stale.Load(), c.errs.Load(), staleEntries, liveLeases, len(c.violations))
	for i, v := range c.violations {
		if i == 20 {
			t.Logf("... and %d more", len(c.violations)-i)
			break
		}
		t.Log(v)
	}
	require.NotZero(t, c.completed.Load(), "no write completed: the stale-read check checked nothing")
	require.Empty(t, c.violations)
}

func (c *campaign) loaders() []*Loader[raceRow] {
	ls := make([]*Loader[raceRow], len(c.procs))
	for i, p := range c.procs {
		ls[i] = p.l
	}
	return ls
}
