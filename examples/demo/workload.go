package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// sample is one tick of the live status line, and one point of the charts.
type sample struct {
	T        float64 // seconds since the run began
	Phase    string
	RPS      float64 // requests per second
	HitRate  float64 // Redis hits / requests, in percent
	QPS      float64 // database SELECTs per second
	P50, P99 time.Duration
	Errors   int64 // failed requests in the tick
	Breaker  string
}

// phaseResult is what one phase measured.
type phaseResult struct {
	Name                        string
	Start, End                  float64 // seconds since the run began
	Requests, Hits, Queries     int64
	Errors                      int64
	P99                         time.Duration
	StampedeGets, StampedeLoads int64 // cold start: the burst on the hottest key
	Writes, Stale               int64 // writes racing slow readers: keys served stale afterwards
	Skipped                     string
	Sentence                    string
}

// runResult is one implementation's run through every phase.
type runResult struct {
	Impl    string
	Samples []sample
	Phases  []phaseResult
}

// phase returns the result of the phase called name (zero if absent).
func (r runResult) phase(name string) phaseResult {
	for _, p := range r.Phases {
		if p.Name == name {
			return p
		}
	}
	return phaseResult{}
}

// Phase names.
const (
	phaseCold   = "cold start"
	phaseSteady = "steady Zipf traffic"
	phaseHot    = "a hot key expiring"
	phaseRace   = "writes racing slow readers"
	phaseOutage = "Redis going dark and coming back"
)

// recorder collects request latencies and errors, per tick and per phase.
type recorder struct {
	mu                 sync.Mutex // protects everything below
	tick, phase        []time.Duration
	tickErrs, phaseErr int64
	requests           int64
}

func (r *recorder) observe(d time.Duration, err error) {
	r.mu.Lock()
	r.tick = append(r.tick, d)
	r.phase = append(r.phase, d)
	r.requests++
	if err != nil {
		r.tickErrs++
		r.phaseErr++
	}
	r.mu.Unlock()
}

// takeTick returns and resets the tick's latencies and errors.
func (r *recorder) takeTick() ([]time.Duration, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, e := r.tick, r.tickErrs
	r.tick, r.tickErrs = nil, 0
	return t, e
}

// takePhase returns and resets the phase's latencies and errors.
func (r *recorder) takePhase() ([]time.Duration, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, e := r.phase, r.phaseErr
	r.phase, r.phaseErr = nil, 0
	return t, e
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[min(len(lat)-1, int(p*float64(len(lat))))]
}

// runner drives one implementation through the phases.
type runner struct {
	cfg   config
	impl  string
	env   *env
	procs []users
	rdbs  []*redis.Client
	rec   recorder
	start time.Time

	mu      sync.Mutex // protects samples, current
	samples []sample
	current string
}

func (r *runner) hits() uint64 {
	var h uint64
	for _, p := range r.procs {
		h += p.Hits()
	}
	return h
}

// sampleLoop appends a sample every cfg.Tick and prints the status line,
// until ctx is done.
func (r *runner) sampleLoop(ctx context.Context, w io.Writer) {
	tick := time.NewTicker(r.cfg.Tick)
	defer tick.Stop()
	last, lastHits, lastQueries := time.Now(), r.hits(), r.env.db.reads.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			lat, errs := r.rec.takeTick()
			hits, queries := r.hits(), r.env.db.reads.Load()
			secs := now.Sub(last).Seconds()
			s := sample{
				T:       now.Sub(r.start).Seconds(),
				RPS:     float64(len(lat)) / secs,
				QPS:     float64(queries-lastQueries) / secs,
				P50:     percentile(lat, 0.50),
				P99:     percentile(lat, 0.99),
				Errors:  errs,
				Breaker: r.procs[0].Breaker(),
			}
			if len(lat) > 0 {
				s.HitRate = 100 * min(1, float64(hits-lastHits)/float64(len(lat)))
			}
			last, lastHits, lastQueries = now, hits, queries
			r.mu.Lock()
			s.Phase = r.current
			r.samples = append(r.samples, s)
			r.mu.Unlock()
			if r.cfg.Live {
				fmt.Fprintf(w, "\r\033[K   %5.1fs %6.0f req/s  hit %5.1f%%  db %5.0f q/s  p99 %6.1fms  errors %4d  breaker %s",
					s.T, s.RPS, s.HitRate, s.QPS, ms(s.P99), s.Errors, s.Breaker)
			}
		}
	}
}

// traffic runs cfg.Workers closed-loop clients per process until ctx is
// done; each request reads the user next(rng) through read.
func (r *runner) traffic(ctx context.Context, read func(ctx context.Context, u users, id string) error, next func(*rand.Rand) string) {
	var wg sync.WaitGroup
	for i, p := range r.procs {
		for j := range r.cfg.Workers {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(j)))
			wg.Go(func() {
				for ctx.Err() == nil {
					id := next(rng)
					t0 := time.Now()
					err := read(ctx, p, id)
					if ctx.Err() != nil {
						return // cut short by the end of the phase
					}
					r.rec.observe(time.Since(t0), err)
					sleep(ctx, r.cfg.Think)
				}
			})
		}
	}
	wg.Wait()
}

// zipf returns a key picker with Zipf s=1.1 over the table's rows: user 1
// is the hottest.
func (r *runner) zipf() func(*rand.Rand) string {
	var (
		mu    sync.Mutex
		zipfs = map[*rand.Rand]*rand.Zipf{}
	)
	return func(rng *rand.Rand) string {
		mu.Lock()
		z, ok := zipfs[rng]
		if !ok {
			z = rand.NewZipf(rng, 1.1, 1, uint64(r.cfg.Rows-1))
			zipfs[rng] = z
		}
		mu.Unlock()
		return itoa(int(z.Uint64()) + 1)
	}
}

func get(ctx context.Context, u users, id string) error {
	_, err := u.Get(ctx, id)
	return err
}

func getHot(ctx context.Context, u users, id string) error {
	_, err := u.GetHot(ctx, id)
	return err
}

// runPhase runs body as the phase called name and records its totals.
func (r *runner) runPhase(ctx context.Context, name string, body func(ctx context.Context, p *phaseResult) error) (phaseResult, error) {
	r.mu.Lock()
	r.current = name
	r.mu.Unlock()
	r.rec.takePhase()
	p := phaseResult{Name: name, Start: time.Since(r.start).Seconds()}
	h0, q0 := r.hits(), r.env.db.reads.Load()
	err := body(ctx, &p)
	lat, errs := r.rec.takePhase()
	p.End = time.Since(r.start).Seconds()
	p.Requests, p.Errors, p.P99 = int64(len(lat)), errs, percentile(lat, 0.99)
	p.Hits = int64(r.hits() - h0)
	p.Queries = r.env.db.reads.Load() - q0
	return p, err
}

// phases runs every phase in turn and reports each as it ends.
func (r *runner) phases(ctx context.Context, report func(i int, p phaseResult)) ([]phaseResult, error) {
	d := r.cfg.Phase
	zipf := r.zipf()
	during := func(ctx context.Context, d time.Duration, f func(ctx context.Context)) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		f(ctx)
	}
	steps := []struct {
		name string
		body func(ctx context.Context, p *phaseResult) error
	}{
		{phaseCold, func(ctx context.Context, p *phaseResult) error {
			// Every process starts at once; each of its first requests asks
			// for the hottest user, whose key is cold.
			q0 := r.env.db.reads.Load()
			var wg sync.WaitGroup
			begin := make(chan struct{})
			for _, u := range r.procs {
				for range r.cfg.Stampede {
					wg.Go(func() {
						<-begin
						t0 := time.Now()
						_, err := u.Get(ctx, "1")
						r.rec.observe(time.Since(t0), err)
					})
				}
			}
			close(begin)
			wg.Wait()
			p.StampedeGets = int64(len(r.procs) * r.cfg.Stampede)
			p.StampedeLoads = r.env.db.reads.Load() - q0
			during(ctx, d, func(ctx context.Context) { r.traffic(ctx, get, zipf) })
			return nil
		}},
		{phaseSteady, func(ctx context.Context, p *phaseResult) error {
			during(ctx, d, func(ctx context.Context) { r.traffic(ctx, get, zipf) })
			return nil
		}},
		{phaseHot, func(ctx context.Context, p *phaseResult) error {
			// Everyone reads one user through a cache whose TTL is a
			// fraction of the phase.
			during(ctx, d, func(ctx context.Context) {
				r.traffic(ctx, getHot, func(*rand.Rand) string { return "1" })
			})
			return nil
		}},
		{phaseRace, func(ctx context.Context, p *phaseResult) error {
			return r.race(ctx, p, zipf)
		}},
		{phaseOutage, func(ctx context.Context, p *phaseResult) error {
			if r.env.mr == nil {
				p.Skipped = "the demo can only stop its embedded miniredis, not " + r.cfg.RedisAddr
				return nil
			}
			var wg sync.WaitGroup
			wg.Go(func() {
				during(ctx, d, func(ctx context.Context) { r.traffic(ctx, get, zipf) })
			})
			sleep(ctx, d/4)
			r.env.mr.Close()
			sleep(ctx, d/2)
			err := r.env.mr.Restart()
			wg.Wait()
			return err
		}},
	}
	var out []phaseResult
	for i, s := range steps {
		p, err := r.runPhase(ctx, s.name, s.body)
		if err != nil {
			return out, fmt.Errorf("%s: %w", s.name, err)
		}
		p.Sentence = explain(r.impl, p)
		out = append(out, p)
		report(i, p)
	}
	return out, nil
}

// race runs Zipf reads whose SELECTs are slow to return while a writer
// renames the hottest users, then checks which of the written users the
// cache still serves older than the table.
func (r *runner) race(ctx context.Context, p *phaseResult, zipf func(*rand.Rand) string) error {
	r.env.db.slowRead.Store(int64(r.cfg.SlowRead))
	var (
		wg      sync.WaitGroup
		written sync.Map
		writes  atomic.Int64
		tctx, c = context.WithTimeout(ctx, r.cfg.Phase)
	)
	defer c()
	wg.Go(func() { r.traffic(tctx, get, zipf) })
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(7, 7))
		// A user edits their profile twice in quick succession: readers
		// that missed after the first write are still in their slow
		// SELECT when the second one commits.
		for i := 0; tctx.Err() == nil; i++ {
			id := itoa(1 + rng.IntN(10))
			for j := range 2 {
				w := r.procs[(i+j)%len(r.procs)]
				if _, err := w.Rename(tctx, id, fmt.Sprintf("user %s (edit %d.%d)", id, i, j)); err == nil {
					written.Store(id, true)
					writes.Add(1)
				}
				sleep(tctx, r.cfg.WriteEvery)
			}
		}
	})
	wg.Wait()
	r.env.db.slowRead.Store(0)
	p.Writes = writes.Load()
	// Quiescence: let in-flight fills land, then compare every written
	// user as each process's cache serves it with the table.
	sleep(ctx, 2*r.cfg.SlowRead)
	var err error
	written.Range(func(k, _ any) bool {
		id := k.(string)
		var row User
		if row, err = r.env.db.get(ctx, id); err != nil {
			return false
		}
		for _, u := range r.procs {
			got, gerr := u.Get(ctx, id)
			if gerr != nil {
				err = gerr
				return false
			}
			if got.Version < row.Version {
				p.Stale++
				break
			}
		}
		return true
	})
	return err
}

// explain is the phase's one sentence: what happened and why.
func explain(impl string, p phaseResult) string {
	lib := impl == implLibrary
	switch p.Name {
	case phaseCold:
		if lib {
			return fmt.Sprintf("Every process asked for the same cold user, %d Gets at once, and the database saw %d quer%s: each process coalesced its callers and one process's Redis lease made the others wait for its fill.",
				p.StampedeGets, p.StampedeLoads, plural(p.StampedeLoads))
		}
		return fmt.Sprintf("%d Gets of the same cold user cost %d database queries: every caller that missed ran its own SELECT and SET (a cache stampede).",
			p.StampedeGets, p.StampedeLoads)
	case phaseSteady:
		return fmt.Sprintf("With the hot set cached, %.1f%% of %d requests were Redis hits and the database saw %d queries, only for the long tail of the Zipf distribution.",
			pct(p.Hits, p.Requests), p.Requests, p.Queries)
	case phaseHot:
		if lib {
			return fmt.Sprintf("The hot user's %v TTL ran out %d times, yet the database saw only %d queries: early refresh reloaded it in the background before it expired, and a missed key is loaded once.",
				hotTTL, int((p.End-p.Start)/hotTTL.Seconds()), p.Queries)
		}
		return fmt.Sprintf("The hot user's %v TTL ran out %d times and the database saw %d queries: at each expiry every reader that missed loaded it at once.",
			hotTTL, int((p.End-p.Start)/hotTTL.Seconds()), p.Queries)
	case phaseRace:
		if lib {
			return fmt.Sprintf("%d writes raced readers whose SELECTs were slow; afterwards %d written users were served older than the table: a fill that began before a write is rejected by the version check and the invalidation's tombstone.",
				p.Writes, p.Stale)
		}
		return fmt.Sprintf("%d writes raced readers whose SELECTs were slow; afterwards %d written users were served older than the table, until their TTL: a slow reader's SET landed after the writer's DEL.",
			p.Writes, p.Stale)
	case phaseOutage:
		if p.Skipped != "" {
			return "Skipped: " + p.Skipped + "."
		}
		if lib {
			return fmt.Sprintf("While Redis was down, %d requests failed of %d (p99 %v): Gets failed open to the database and the circuit breaker stopped paying the Redis timeout; after the restart the hit rate recovered.",
				p.Errors, p.Requests, p.P99.Round(100*time.Microsecond))
		}
		return fmt.Sprintf("While Redis was down, %d of %d requests failed and p99 was %v: with no breaker and no Redis timeout of its own, every Get waits out go-redis's dial retries or fails with the Redis error.",
			p.Errors, p.Requests, p.P99.Round(100*time.Microsecond))
	}
	return ""
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func plural(n int64) string {
	if n == 1 {
		return "y"
	}
	return "ies"
}
