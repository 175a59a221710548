package cache

import (
	"context"
	"errors"
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

	"github.com/f4df6ac3/cache/internal/testenv"
)

// The Sentinel failover test: the master of a real Redis Sentinel setup (a
// master, its replica, three sentinels) is SIGKILLed while readers and
// writers run against it through several Loaders, each on a
// redis.NewFailoverClient of its own, on the race test's MariaDB table.
// Gets must keep answering (fail-open: no error, each bounded by
// RedisTimeout plus the load), the sentinels must promote the replica, Gets
// must be answered from Redis again once they have, the invalidations
// queued during the outage must be applied on the new master, and once the
// writers stop every entry must agree with the database.
//
// While no master exists (from the kill until the promotion) every Redis
// call fails fast: the failover client asks a sentinel for the master at
// each dial and is told the dead address, which refuses the connection.
// TestSentinelPartition and TestSentinelPartitionMinReplicas run the same
// load through a partition instead of a kill (see them).
//
// What Sentinel cannot promise, and what the test therefore measures
// instead of requiring:
//   - Replication is asynchronous: a write the old master acknowledged but
//     had not yet sent to its replica (an invalidation, a write-through's
//     Set) is lost with it, and the replica serves the value from before
//     that write until its soft TTL (kept until its hard TTL). Such stale
//     reads must end by kill + TTL × (1 + Jitter); and no write that began
//     after the kill can be lost that way, so a Get that begins after such
//     a write returned must see it.
//   - A write-through whose Redis write fails queues its invalidation in
//     its own process (whose Gets of the key bypass Redis meanwhile); other
//     processes may read the value from before the write until the retry
//     lands. Such stale reads must end once no invalidation is queued.

const (
	sentinelTTL = 2 * time.Second
	// sentinelRedisTimeout is the Loaders' RedisTimeout: above what a call
	// takes on a healthy Redis under -race on a small machine, so that the
	// failover, not the machine, is what the Gets meet.
	sentinelRedisTimeout = 200 * time.Millisecond
	sentinelReaders      = 8
	sentinelWriters      = 4 // even: Invalidate; odd: WriteThrough
	// sentinelWarm is how long the load runs before the kill, and
	// sentinelAfter how long it keeps running once hits have resumed.
	sentinelWarm  = time.Second
	sentinelAfter = time.Second
	sentinelQuiet = 300 * time.Millisecond
	// sentinelMargin is the slack of the bounds on stale reads after a
	// lost write (TTL-based): scheduling under -race on 2 cores.
	sentinelMargin = 300 * time.Millisecond
	// sentinelGetMargin is what a Get may take beyond RedisTimeout and its
	// load before the test calls it a hang. Measured under -race on 2
	// busy cores (load average ~12) a Get took 816ms against 742ms with a
	// 300ms margin; the hangs it exists to catch — a dial timeout, an
	// orphaned lease waited out — last seconds.
	sentinelGetMargin = time.Second
	// sentinelPromote bounds the failover itself (down-after 1s, then the
	// sentinels agree, elect a leader and promote the replica: 2–3s here).
	sentinelPromote = 20 * time.Second
	// sentinelResume bounds the time from the promotion to the first hit:
	// the clients learn the new master from the sentinels (at their next
	// dial, or from +switch-master), and each Loader's breaker, opened by
	// the outage, is closed by its prober once BreakerCooldown has passed.
	sentinelResume = 10 * time.Second
	// sentinelRecoveryFrom is when, after the kill, the first hit and
	// breaker close start to count as the recovery: half the sentinels'
	// down-after, before which they cannot have promoted the replica.
	sentinelRecoveryFrom = 500 * time.Millisecond
	// sentinelBucket is the width of the hits timeline's buckets.
	sentinelBucket = 250 * time.Millisecond
)

// sentinelRead is one Get as a reader saw it.
type sentinelRead struct {
	at    time.Duration // when it began, from the start of the run
	took  time.Duration
	id    int
	ver   int64
	stale bool // older than a write completed before it began
	// degraded: the key had a write-through whose Redis write failed (its
	// invalidation queued for retry) at a version newer than the answer.
	degraded bool
}

// sentinelWrite is one write as its writer saw it.
type sentinelWrite struct {
	id  int
	ver int64
	// began is when the call whose Redis side succeeded (or was queued)
	// began: the WriteThrough, or the Invalidate attempt that returned nil.
	began, returned time.Duration
	queued          bool // a write-through whose invalidation was queued
}

// sentinelTimeline is the Loaders' Recorder: it counts Get results per
// sentinelBucket of the run, and notes when some events were first counted
// after the times the test arms it with.
type sentinelTimeline struct {
	start      time.Time
	hits, gets [400]atomic.Int64
	// Events before these (ns since start) are not noted: Redis errors and
	// applied queued invalidations before faultAfter (the fault), hits and
	// breaker closes before recoveryAfter.
	faultAfter, recoveryAfter atomic.Int64
	// first hit, breaker close, queued invalidation applied, Redis error
	// counted after the thresholds (ns since start; -1 until seen).
	firstHit, firstClose, firstRetried, firstError atomic.Int64
}

func newSentinelTimeline() *sentinelTimeline {
	tl := &sentinelTimeline{start: time.Now()}
	tl.faultAfter.Store(int64(time.Hour))
	tl.recoveryAfter.Store(int64(time.Hour))
	for _, a := range []*atomic.Int64{&tl.firstHit, &tl.firstClose, &tl.firstRetried, &tl.firstError} {
		a.Store(-1)
	}
	return tl
}

func (tl *sentinelTimeline) Count(_ string, e Event) {
	now := int64(time.Since(tl.start))
	b := min(int(time.Duration(now)/sentinelBucket), len(tl.gets)-1)
	var first *atomic.Int64
	after := &tl.recoveryAfter
	switch e {
	case EventHit:
		tl.hits[b].Add(1)
		tl.gets[b].Add(1)
		first = &tl.firstHit
	case EventMiss, EventNegativeHit, EventStale, EventBypass:
		tl.gets[b].Add(1)
	case EventBreakerClosed:
		first = &tl.firstClose
	case EventInvalidationRetried:
		first, after = &tl.firstRetried, &tl.faultAfter
	case EventRedisError:
		first, after = &tl.firstError, &tl.faultAfter
	}
	if first != nil && now >= after.Load() && first.Load() < 0 {
		first.CompareAndSwap(-1, now)
	}
}

func (tl *sentinelTimeline) ObserveLoad(string, time.Duration, error) {}

// at returns the time a first* field holds, or -1.
func (tl *sentinelTimeline) at(a *atomic.Int64) time.Duration { return time.Duration(a.Load()) }

func TestSentinelFailover(t *testing.T) { runSentinelFault(t, sentinelKilled) }

// TestSentinelPartition cuts the master off from the sentinels and its
// replica while the application still reaches it: the classic split brain.
// The sentinels promote the replica; until each client learns of it, it
// goes on reading from and writing to the old master, whose writes (the
// invalidations among them) never reach the new one. Nothing here can
// return an error or leave an entry stale beyond the TTL: stale entries
// must end by the last client's switch + TTL, and writes that began after
// it must be seen.
func TestSentinelPartition(t *testing.T) { runSentinelFault(t, sentinelCutOff) }

// TestSentinelPartitionMinReplicas is the same partition with the servers
// run as the README recommends against it: min-replicas-to-write 1 and two
// replicas. The old master, left without replicas, refuses writes (the
// library's scripts fail with NOREPLICAS: Gets answer from the database,
// WriteThrough queues its invalidation), so nothing written after it
// refused can be lost: every key written since agrees with the database
// once quiet.
func TestSentinelPartitionMinReplicas(t *testing.T) {
	runSentinelFault(t, sentinelCutOffMinReplicas)
}

// sentinelFault is what happens to the master.
type sentinelFault int

const (
	sentinelKilled            sentinelFault = iota // SIGKILL
	sentinelCutOff                                 // partitioned from the sentinels and the replica, not from the clients
	sentinelCutOffMinReplicas                      // the same, two replicas and min-replicas-to-write 1
)

// runSentinelFault runs the scenario with the master SIGKILLed, or
// partitioned away.
func runSentinelFault(t *testing.T, mode sentinelFault) {
	begin := time.Now()
	partition := mode != sentinelKilled
	cfg := testenv.SentinelConfig{Partitionable: partition}
	fault := "kill"
	if partition {
		fault = "partition"
	}
	if mode == sentinelCutOffMinReplicas {
		cfg.Replicas = 2
		cfg.ServerArgs = []string{"--min-replicas-to-write", "1"}
	}
	s := testenv.StartSentinel(t, cfg)
	t.Logf("master, %d replicas and %d sentinels up in %v", len(s.Servers())-1, len(s.SentinelAddrs), time.Since(begin).Round(time.Millisecond))
	seed := raceSeed(t)
	db := newRaceDB(t, seed)
	tl := newSentinelTimeline()

	// The Loaders (processes), each with a failover client of its own;
	// loads are timed, for the bound on a Get.
	var maxLoad atomic.Int64
	lib := &raceLib{db: db, rdb: s.Client(t)}
	lib.prefix = testenv.Prefix(t, lib.rdb, "cachetest:")
	for range raceLoaders {
		l, err := New(s.Client(t), "items", func(ctx context.Context, key string) (raceRow, error) {
			id, err := strconv.Atoi(key)
			if err != nil {
				return raceRow{}, err
			}
			start := time.Now()
			r, err := db.slowRead(ctx, id)
			raceStoreMax(&maxLoad, int64(time.Since(start)))
			return r, err
		}, &Options{Prefix: lib.prefix, TTL: sentinelTTL, RedisTimeout: sentinelRedisTimeout, Recorder: tl})
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		lib.loaders = append(lib.loaders, l)
	}
	ctx := context.Background()

	// Warm every key.
	for id := range raceKeys {
		_, err := lib.get(ctx, 0, id)
		require.NoError(t, err)
	}

	var (
		floor     [raceKeys]atomic.Int64 // as raceHarness.floor
		queuedVer [raceKeys]atomic.Int64 // highest version whose write-through queued its invalidation
		start     = tl.start
		since     = func() time.Duration { return time.Since(start) }
		stop      = make(chan struct{})
		stopW     = make(chan struct{})
		readers   sync.WaitGroup
		writers   sync.WaitGroup
		reads     = make([][]sentinelRead, sentinelReaders)
		writes    = make([][]sentinelWrite, sentinelWriters)
		mu        sync.Mutex // protects errs
		errs      []error
		invErrs   atomic.Int64 // Invalidate calls that failed and were retried
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	// A hang shows as errors, not as a hung test.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for i := range sentinelReaders {
		readers.Add(1)
		rnd := rand.New(rand.NewPCG(seed, uint64(i)))
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := rnd.IntN(raceKeys)
				fl := floor[id].Load() // before the Get begins
				at := since()
				v, err := lib.get(rctx, rnd.IntN(raceLoaders), id)
				r := sentinelRead{at: at, took: since() - at, id: id, ver: v.Ver}
				if err != nil {
					fail(fmt.Errorf("get %d at %v (took %v): %w", id, at, r.took, err))
					continue
				}
				if v.ID != id {
					fail(fmt.Errorf("get %d answered row %d", id, v.ID))
					continue
				}
				if v.Ver < fl {
					r.stale = true
					r.degraded = queuedVer[id].Load() > v.Ver
				}
				reads[i] = append(reads[i], r)
			}
		}()
	}
	for w := range sentinelWriters {
		writers.Add(1)
		rnd := rand.New(rand.NewPCG(seed, uint64(1000+w)))
		l := lib.loaders[w%raceLoaders] // only this writer writes through it
		go func() {
			defer writers.Done()
			for i := 0; ; i++ {
				select {
				case <-stopW:
					return
				default:
				}
				id := rnd.IntN(raceKeys)
				key, val := strconv.Itoa(id), fmt.Sprintf("w%d-%d", w, i)
				wr := sentinelWrite{id: id}
				if w%2 == 1 {
					queued := l.Stats().InvalidationsQueued
					wr.began = since()
					r, err := l.WriteThrough(rctx, key, func(ctx context.Context) (raceRow, error) {
						return db.update(ctx, id, val)
					})
					if err != nil {
						fail(fmt.Errorf("write-through %d: %w", id, err))
						return
					}
					wr.ver = r.Ver
					if l.Stats().InvalidationsQueued != queued {
						wr.queued = true
						raceStoreMax(&queuedVer[id], wr.ver)
					}
				} else {
					r, err := db.update(rctx, id, val)
					if err != nil {
						fail(fmt.Errorf("update %d: %w", id, err))
						return
					}
					wr.ver = r.Ver
					// As an application (or its outbox) must: retry the
					// invalidation until Redis takes it.
					for {
						wr.began = since()
						err := l.Invalidate(rctx, key)
						if err == nil {
							break
						}
						invErrs.Add(1)
						if rctx.Err() != nil {
							fail(fmt.Errorf("invalidate %d: %w", id, err))
							return
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				wr.returned = since()
				writes[w] = append(writes[w], wr)
				raceStoreMax(&floor[id], wr.ver)
				time.Sleep(time.Millisecond)
			}
		}()
	}

	// Steady state, then the crash or the partition.
	old, err := s.Master(ctx)
	require.NoError(t, err)
	oldConn := s.Server(old).Client(t).Conn() // direct: not cut by the partition
	t.Cleanup(func() { oldConn.Close() })
	time.Sleep(sentinelWarm)
	before := lib.stats()
	var oldBefore, oldCalls sentinelServerCalls
	if partition {
		oldBefore = sentinelCalls(t, oldConn)
	}
	killAt := since()
	tl.faultAfter.Store(int64(killAt))
	if partition {
		s.Partition(t)
	} else {
		s.Server(old).Kill(t)
	}
	// safeFrom is when no client could write to the old master any more
	// (after the kill; once it refused writes; once the last client left
	// it): a write that began later reached the new master (or was queued).
	// readsSafeFrom is when no client could read from it any more.
	safeFrom := since()
	readsSafeFrom := safeFrom
	if mode == sentinelCutOffMinReplicas {
		safeFrom = sentinelWaitRefusing(t, oldConn, lib.prefix+"probe").Sub(start)
		t.Logf("the old master refused writes %v after the partition", (safeFrom - killAt).Round(time.Millisecond))
	}
	if !partition {
		// A Get whose read the master answered just before the kill counts
		// its hit just after it; the sentinels cannot promote the replica
		// before down-after (1s) has passed: recovery is what happens from
		// half of it.
		tl.recoveryAfter.Store(int64(killAt + sentinelRecoveryFrom))
	}
	promotedAddr, promotedAt := s.WaitPromoted(t, old, sentinelPromote)
	promoted := promotedAt.Sub(start)
	t.Logf("%s of the master %s at %v (done %v later); the sentinels promoted %s %v after the %s", fault, old,
		killAt.Round(time.Millisecond), (readsSafeFrom - killAt).Round(time.Millisecond),
		promotedAddr, (promoted - killAt).Round(time.Millisecond), fault)
	if partition {
		// The clients leave the old master as they learn of the promotion
		// from their sentinels.
		at, subscribers := sentinelWaitClientsLeft(t, oldConn, sentinelResume)
		readsSafeFrom = at.Sub(start)
		if mode == sentinelCutOff {
			safeFrom = readsSafeFrom
		}
		tl.recoveryAfter.Store(int64(readsSafeFrom))
		oldCalls = sentinelCalls(t, oldConn).minus(oldBefore)
		t.Logf("the last client left the old master %v after the promotion (%d wake-up subscriptions stayed on it); meanwhile (from the partition) the old master ran %d scripts (invalidations, sets, leases, fills), answered %d reads and refused %d commands with NOREPLICAS; the new master saw none of it",
			(readsSafeFrom - promoted).Round(time.Millisecond), subscribers, oldCalls.scripts, oldCalls.reads, oldCalls.noReplicas)
	}

	// Hits resume: bounded wait on the Loaders' events. After a kill no
	// Get can be a hit until the promotion: there is no master.
	resumeDeadline := time.Now().Add(sentinelResume)
	for tl.at(&tl.firstHit) < 0 {
		require.True(t, time.Now().Before(resumeDeadline), "no Get was answered from Redis within %v of the promotion", sentinelResume)
		time.Sleep(5 * time.Millisecond) // polling the Loaders' events
	}
	resumed := tl.at(&tl.firstHit)
	t.Logf("first hit %v after the promotion (%v after the %s)", (resumed - promoted).Round(time.Millisecond),
		(resumed - killAt).Round(time.Millisecond), fault)
	time.Sleep(sentinelAfter)
	close(stopW)
	writers.Wait()
	writersDone := since()
	// The write-throughs' queued invalidations are retried in the
	// background until they land: wait for that (readers still running),
	// as a process that goes on running would.
	drainDeadline := time.Now().Add(15 * time.Second)
	for lib.stats().InvalidationsPending > 0 {
		require.True(t, time.Now().Before(drainDeadline), "queued invalidations still pending 15s after the writers stopped")
		time.Sleep(5 * time.Millisecond) // polling the Loaders' state
	}
	drained := since()
	// Readers go on for a moment: no Get may be stale now (but for a write
	// lost with the old master).
	time.Sleep(sentinelQuiet)
	close(stop)
	readers.Wait()
	end := since()
	after := lib.stats()
	lib.drain() // Close: loads, fills and queued invalidations finish
	final := lib.stats()
	require.NoError(t, errors.Join(errs...), "Gets must fail open: no error reaches the caller")
	// The checks below read Redis through clients that dial now: their
	// sentinel must not send them to the old master. (On a starved
	// machine the sentinels may have failed over once more, from the
	// promoted replica to the other: any master but the old one will do.)
	if now, err := s.Master(context.Background()); err != nil || now != promotedAddr {
		t.Logf("the sentinels moved on from %s: %s, %v", promotedAddr, now, err)
		s.WaitPromoted(t, old, sentinelPromote)
	}

	var all []sentinelRead
	for _, rs := range reads {
		all = append(all, rs...)
	}
	slices.SortFunc(all, func(a, b sentinelRead) int { return int(a.at - b.at) })
	var allWrites []sentinelWrite
	for _, ws := range writes {
		allWrites = append(allWrites, ws...)
	}

	// What the readers saw, by phase.
	type phase struct {
		name     string
		from, to time.Duration
	}
	phases := []phase{
		{"before the " + fault, 0, killAt},
		{fault + " to promotion", killAt, promoted},
		{"promotion to first hit", promoted, resumed},
		{"after", resumed, writersDone},
		{"writers stopped, invalidations queued", writersDone, drained},
		{"no invalidation queued", drained, end},
	}
	if partition {
		phases = slices.Insert(phases, 2, phase{"promotion to the last client's switch", promoted, readsSafeFrom})
		phases[3].from = readsSafeFrom
	}
	for _, p := range phases {
		var lat []time.Duration
		stale := 0
		for _, r := range all {
			if r.at >= p.from && r.at < p.to {
				lat = append(lat, r.took)
				if r.stale {
					stale++
				}
			}
		}
		if len(lat) == 0 {
			t.Logf("%-38s %v–%v: no Gets", p.name, p.from.Round(time.Millisecond), p.to.Round(time.Millisecond))
			continue
		}
		slices.Sort(lat)
		q := func(f float64) time.Duration {
			return lat[min(len(lat)-1, int(f*float64(len(lat))))].Round(10 * time.Microsecond)
		}
		t.Logf("%-38s %v–%v: %d Gets; p50 %v p99 %v max %v; %d stale",
			p.name, p.from.Round(time.Millisecond), p.to.Round(time.Millisecond), len(lat),
			q(0.5), q(0.99), lat[len(lat)-1].Round(10*time.Microsecond), stale)
	}
	var timeline []string
	for b := 0; time.Duration(b)*sentinelBucket < end && b < len(tl.gets); b++ {
		timeline = append(timeline, fmt.Sprintf("%d/%d", tl.hits[b].Load(), tl.gets[b].Load()))
	}
	t.Logf("hits/Gets per %v: %v", sentinelBucket, timeline)
	rel := func(a *atomic.Int64) string {
		if tl.at(a) < 0 {
			return "never"
		}
		return (tl.at(a) - killAt).Round(time.Millisecond).String()
	}
	t.Logf("after the %s: first Redis error %s, promotion %v, first breaker close %s, first queued invalidation applied %s, first hit %s",
		fault, rel(&tl.firstError), (promoted - killAt).Round(time.Millisecond), rel(&tl.firstClose), rel(&tl.firstRetried), rel(&tl.firstHit))

	// Stale reads: none before the fault; those explained by a queued
	// invalidation end when it lands, those by a write lost with the old
	// master (or a read from it) by the TTL; and once no client reads from
	// the old master, a Get that began after a write that began once no
	// client could write to it, and returned, must see it (or something
	// newer): that write reached the new master, nothing can have lost it.
	ackedAfter := make([][]sentinelWrite, raceKeys) // by key, in order of return
	var queuedWrites int
	for _, w := range allWrites {
		if w.queued {
			queuedWrites++
		}
		if !w.queued && w.began > safeFrom && w.returned > readsSafeFrom {
			ackedAfter[w.id] = append(ackedAfter[w.id], w)
		}
	}
	for id := range ackedAfter {
		slices.SortFunc(ackedAfter[id], func(a, b sentinelWrite) int { return int(a.returned - b.returned) })
	}
	var maxTook time.Duration
	var staleAfterFault, degradedStale, lostStale, violations int
	var lastLost, lastDegraded time.Duration = -1, -1
	for _, r := range all {
		maxTook = max(maxTook, r.took)
		var seen int64 // the newest write after safeFrom acknowledged before r began
		for _, w := range ackedAfter[r.id] {
			if w.returned >= r.at {
				break
			}
			seen = max(seen, w.ver)
		}
		if r.ver < seen {
			violations++
			if violations <= 5 {
				t.Errorf("stale read at %v: key %d answered version %d, version %d was written (begun after %v, when no client could write to the old master) and acknowledged by Redis before the Get began (after %v, when no client read from it)", r.at, r.id, r.ver, seen, safeFrom, readsSafeFrom)
			}
		}
		if !r.stale {
			continue
		}
		if r.at < killAt {
			t.Errorf("stale read at %v, before the %s", r.at, fault)
		}
		staleAfterFault++
		if r.degraded {
			degradedStale++
			lastDegraded = r.at
			if r.at >= drained {
				t.Errorf("stale read at %v, after the queued invalidations were applied (%v)", r.at, drained)
			}
		} else {
			lostStale++
			lastLost = r.at
		}
	}
	d := after.minus(before)
	t.Logf("writes %d: %d Invalidate calls failed and were retried, %d write-throughs queued their invalidation",
		len(allWrites), invErrs.Load(), queuedWrites)
	t.Logf("from the %s on: redis errors %d, redis calls skipped (breaker open) %d, breaker opened %d times, loads %d, hits %d, misses %d, bypasses %d, lease waits %d",
		fault, d.RedisErrors, d.RedisSkipped, d.BreakerOpened, d.Loads, d.Hits, d.Misses, d.Bypassed, d.LeaseWaits)
	t.Logf("invalidations: queued %d, retried %d, dropped %d; none pending %v after the writers stopped",
		final.InvalidationsQueued, final.InvalidationsRetried, final.InvalidationsDropped, (drained - writersDone).Round(time.Millisecond))
	ago := func(d time.Duration) string {
		if d < 0 {
			return "none"
		}
		return (d - killAt).Round(time.Millisecond).String() + " after the " + fault
	}
	t.Logf("stale reads after the %s: %d of %d Gets: %d after a write-through whose Redis write failed (queued invalidation; the last %s), %d otherwise (a write acknowledged by the old master and lost, or read from it; the last %s)",
		fault, staleAfterFault, len(all), degradedStale, ago(lastDegraded), lostStale, ago(lastLost))

	// Fail-open, bounded: RedisTimeout is a Get's whole Redis budget.
	bound := sentinelRedisTimeout + time.Duration(maxLoad.Load()) + sentinelGetMargin
	t.Logf("slowest Get %v; bound %v (RedisTimeout %v + slowest load %v + margin %v)", maxTook.Round(time.Millisecond),
		bound.Round(time.Millisecond), sentinelRedisTimeout, time.Duration(maxLoad.Load()).Round(time.Millisecond), sentinelGetMargin)
	require.LessOrEqual(t, maxTook, bound, "a Get outlasted RedisTimeout + load")
	require.NotZero(t, before.Hits, "no hits before the %s", fault)
	require.Zero(t, final.LoadErrors)
	require.Zero(t, final.InvalidationsDropped, "queued invalidations were dropped")
	if mode != sentinelCutOff {
		// The outage lasts at least down-after (1s) while a writer writes
		// through every few milliseconds: its Redis writes fail and queue
		// invalidations, which must all land on the new master.
		require.NotZero(t, final.InvalidationsQueued, "no invalidation was queued during the failover: the scenario did not test their replay")
		require.Positive(t, tl.at(&tl.firstRetried), "no queued invalidation was applied after the %s", fault)
	}
	// A write lost with the old master leaves the value the new one had:
	// filled before the last client left the old master (before the kill),
	// so its soft TTL ends it by then + TTL × (1 + Jitter).
	lostFrom := killAt
	if partition {
		lostFrom = readsSafeFrom
	}
	if lastLost >= 0 {
		require.Less(t, lastLost, lostFrom+sentinelTTL*11/10+sentinelMargin, "stale reads from a lost write outlived the TTL bound")
	}

	// After the writers: every entry agrees with the database. A key
	// written after safeFrom must agree at once (its last write reached the
	// new master, directly or from the retry queue); one whose last write
	// was before may hold a value whose invalidation was lost with the old
	// master, until its hard TTL has run out.
	writtenAfter := make([]bool, raceKeys)
	for _, w := range allWrites {
		if w.began > safeFrom {
			writtenAfter[w.id] = true
		}
	}
	check := func() (stale []string, strict int) {
		for id := range raceKeys {
			want, err := db.read(ctx, id)
			require.NoError(t, err)
			got, ok, err := lib.cached(ctx, id)
			require.NoError(t, err)
			if ok && got != want {
				stale = append(stale, fmt.Sprintf("key %d: cached %+v, database %+v (written once the old master was out of reach: %v)", id, got, want, writtenAfter[id]))
				if writtenAfter[id] {
					strict++
				}
			}
		}
		return stale, strict
	}
	stale, strict := check()
	t.Logf("stale entries once quiet: %d %v", len(stale), stale)
	require.Zero(t, strict, "entries of keys written once the old master was out of reach differ from the database once quiet: %v", stale)
	ttlDeadline := time.Now().Add(sentinelTTL*11/10 + sentinelMargin)
	for len(stale) > 0 {
		require.True(t, time.Now().Before(ttlDeadline), "stale entries outlived their TTL: %v", stale)
		time.Sleep(50 * time.Millisecond) // waiting on Redis expiry
		stale, _ = check()
	}

	// A fresh process reads every key and sees the database.
	requireFreshLoaderSeesDB(t, s.Client(t), db, lib.prefix, sentinelTTL)

	if mode == sentinelCutOffMinReplicas {
		require.NotZero(t, oldCalls.noReplicas, "the old master refused nothing: the scenario did not test min-replicas-to-write")
		// NOREPLICAS says the master cannot serve writes: the Loaders must
		// count such replies as failed Redis calls (once per call: a
		// pipeline of refused scripts is one), so an operator sees why
		// the hit rate fell. (The breakers need not open: the old master
		// still answers reads, and each success ends a run of failures.)
		t.Logf("the old master refused %d commands with NOREPLICAS; the Loaders counted %d Redis errors, skipped %d calls, opened breakers %d times",
			oldCalls.noReplicas, d.RedisErrors, d.RedisSkipped, d.BreakerOpened)
		require.NotZero(t, d.RedisErrors, "NOREPLICAS replies were not counted as Redis errors")
	}
	t.Logf("test took %v", time.Since(begin).Round(time.Millisecond))
}

// sentinelServerCalls counts what a server ran.
type sentinelServerCalls struct {
	scripts, reads int64 // EVAL and EVALSHA; GETRANGE and GET (entry reads)
	noReplicas     int64 // NOREPLICAS error replies
}

func (c sentinelServerCalls) minus(b sentinelServerCalls) sentinelServerCalls {
	return sentinelServerCalls{c.scripts - b.scripts, c.reads - b.reads, c.noReplicas - b.noReplicas}
}

// sentinelCalls reads the server's INFO commandstats and errorstats.
func sentinelCalls(t *testing.T, c *redis.Conn) sentinelServerCalls {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "commandstats", "errorstats").Result()
	require.NoError(t, err)
	var n sentinelServerCalls
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		field, _, _ := strings.Cut(rest, ",") // calls=N or count=N
		_, num, ok := strings.Cut(field, "=")
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(num, 10, 64)
		require.NoError(t, err, "INFO line %q", line)
		switch name {
		case "cmdstat_eval", "cmdstat_evalsha":
			n.scripts += v
		case "cmdstat_getrange", "cmdstat_get":
			n.reads += v
		case "errorstat_NOREPLICAS":
			n.noReplicas += v
		}
	}
	return n
}

// sentinelWaitClientsLeft polls the server on c (every few milliseconds,
// for at most within) until the only connections it has are c and
// subscribers, and returns when it first saw that and how many subscribers
// were left. go-redis drops its connections to the old master when it
// learns of a failover, but not its subscriptions (the Loaders' wake-up
// channels).
func sentinelWaitClientsLeft(t *testing.T, c *redis.Conn, within time.Duration) (time.Time, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	self, err := c.ClientID(ctx).Result()
	require.NoError(t, err)
	var left []string
	for {
		list, err := c.ClientList(ctx).Result()
		require.NoError(t, err, "CLIENT LIST on the old master")
		left = left[:0]
		subscribers := 0
		for line := range strings.Lines(list) {
			var id int64
			var flags string
			for f := range strings.FieldsSeq(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					id, _ = strconv.ParseInt(v, 10, 64)
				}
				if v, ok := strings.CutPrefix(f, "flags="); ok {
					flags = v
				}
			}
			switch {
			case id == self:
			case strings.Contains(flags, "P"):
				subscribers++
			default:
				left = append(left, strings.TrimSpace(line))
			}
		}
		if len(left) == 0 {
			return time.Now(), subscribers
		}
		select {
		case <-ctx.Done():
			t.Fatalf("clients still on the old master %v after the promotion: %q", within, left)
		case <-time.After(5 * time.Millisecond): // polling the server's state
		}
	}
}

// sentinelWaitRefusing writes probe on the server on c (every few
// milliseconds, for at most 10s) until the server refuses with NOREPLICAS,
// and returns when it first did.
func sentinelWaitRefusing(t *testing.T, c *redis.Conn, probe string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		err := c.Set(ctx, probe, "1", time.Second).Err()
		if err != nil && strings.HasPrefix(err.Error(), "NOREPLICAS") {
			return time.Now()
		}
		require.NoError(t, ctx.Err(), "the partitioned old master still takes writes (last SET: %v)", err)
		time.Sleep(5 * time.Millisecond) // polling the server's state
	}
}
