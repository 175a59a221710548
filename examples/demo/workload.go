package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// sample is one tick of the live status line, and one point of the charts.
type sample struct {
	T        float64 // seconds since the run began, at the tick's end
	Phase    string
	Requests int64   // requests that ended in the tick
	Queries  int64   // database SELECTs in the tick
	RPS      float64 // requests per second
	HitRate  float64 // cache hits (Redis, or process memory for the tier) / requests, in percent
	QPS      float64 // database SELECTs per second
	P50, P99 time.Duration
	Errors   int64 // failed requests in the tick
	Breaker  string
}

// QueriesPer1k is the tick's database SELECTs per 1,000 requests (0 when
// the tick saw no requests).
func (s sample) QueriesPer1k() float64 { return per1k(s.Queries, s.Requests) }

// phaseResult is what one phase measured.
type phaseResult struct {
	Name                    string
	Start, End              float64 // seconds since the run began
	Requests, Hits, Queries int64
	Errors                  int64
	P50, P99                time.Duration
	Lib                     libCounts // the library's counters over the phase (zero for the textbook)
	Cold                    *coldResult
	Race                    *raceResult
	Outage                  *outageResult
	Skipped                 string // why the phase did not run
	Sentence                string
}

// Seconds is how long the phase ran.
func (p phaseResult) Seconds() float64 { return p.End - p.Start }

// HitRate is the phase's cache hits (Redis, or process memory for the
// tier) per request, in percent.
func (p phaseResult) HitRate() float64 { return pct(p.Hits, p.Requests) }

// QPS is the phase's database SELECTs per second.
func (p phaseResult) QPS() float64 {
	if p.Seconds() <= 0 {
		return 0
	}
	return float64(p.Queries) / p.Seconds()
}

// QueriesPer1k is the phase's database SELECTs per 1,000 requests.
func (p phaseResult) QueriesPer1k() float64 { return per1k(p.Queries, p.Requests) }

// coldResult is the cold start's burst: every process asks for the
// hottest user at once, before anything is cached.
type coldResult struct {
	Gets, Loads int64     // Gets in the burst, database SELECTs they caused
	Lib         libCounts // the library's counters over the burst
}

// runResult is one implementation's run through every phase.
type runResult struct {
	Impl    string
	Samples []sample
	Phases  []phaseResult
	Skipped string // why the implementation did not run at all ("" if it ran)
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

// Phase names, and the short labels the charts print.
const (
	phaseCold   = "cold start"
	phaseSteady = "steady Zipf traffic"
	phaseHot    = "a hot key expiring"
	phaseRace   = "writes racing slow readers"
	phaseOutage = "Redis going dark and coming back"
)

// phaseNames are the phases in run order.
var phaseNames = []string{phaseCold, phaseSteady, phaseHot, phaseRace, phaseOutage}

var phaseLabels = map[string]string{
	phaseCold:   "1 cold start",
	phaseSteady: "2 steady",
	phaseHot:    "3 hot key",
	phaseRace:   "4 write race",
	phaseOutage: "5 Redis outage",
}

// recorder collects request latencies and errors, per tick and per phase.
type recorder struct {
	mu                 sync.Mutex // protects everything below
	tick               []time.Duration
	phase              []request
	tickErrs, phaseErr int64
	requests           int64 // since the run began
}

// request is one request of the current phase.
type request struct {
	end    time.Time
	took   time.Duration
	failed bool
}

func (r *recorder) observe(d time.Duration, err error) {
	end := time.Now()
	r.mu.Lock()
	r.tick = append(r.tick, d)
	r.phase = append(r.phase, request{end: end, took: d, failed: err != nil})
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

// takePhase returns and resets the phase's requests' latencies and errors.
func (r *recorder) takePhase() ([]time.Duration, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lat := make([]time.Duration, len(r.phase))
	for i, q := range r.phase {
		lat[i] = q.took
	}
	e := r.phaseErr
	r.phase, r.phaseErr = nil, 0
	return lat, e
}

// span is what a set of requests measured.
type span struct {
	Requests, Errors int64
	P50, P99         time.Duration
}

// during is what the phase's requests that were running at some moment
// between from and to measured (a request that began before from, or
// ended after to, counts).
func (r *recorder) during(from, to time.Time) span {
	return r.span(func(q request) bool { return !q.end.Before(from) && !q.end.Add(-q.took).After(to) })
}

// ended is what the phase's requests that ended between from and to
// measured.
func (r *recorder) ended(from, to time.Time) span {
	return r.span(func(q request) bool { return !q.end.Before(from) && !q.end.After(to) })
}

func (r *recorder) span(in func(request) bool) span {
	var (
		s   span
		lat []time.Duration
	)
	r.mu.Lock()
	for _, q := range r.phase {
		if in(q) {
			lat = append(lat, q.took)
			if q.failed {
				s.Errors++
			}
		}
	}
	r.mu.Unlock()
	s.Requests = int64(len(lat))
	s.P50, s.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return s
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

	finished []phaseResult // phases done so far, in order
}

func (r *runner) hits() uint64 {
	var h uint64
	for _, p := range r.procs {
		h += p.Hits()
	}
	return h
}

// counts sums the library's counters over the processes.
func (r *runner) counts() libCounts {
	var c libCounts
	for _, p := range r.procs {
		c = c.add(p.Counts())
	}
	return c
}

// since is the time since the run began, in seconds.
func (r *runner) since(t time.Time) float64 { return t.Sub(r.start).Seconds() }

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
				T:        r.since(now),
				Requests: int64(len(lat)),
				Queries:  queries - lastQueries,
				RPS:      float64(len(lat)) / secs,
				QPS:      float64(queries-lastQueries) / secs,
				P50:      percentile(lat, 0.50),
				P99:      percentile(lat, 0.99),
				Errors:   errs,
				Breaker:  r.procs[0].Breaker(),
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
				fmt.Fprintf(w, "\r\033[K   %5.1fs %6.0f req/s  hit %5.1f%%  db %5.0f q/s (%5.1f per 1k req)  p99 %6.1fms  errors %4d  breaker %s",
					s.T, s.RPS, s.HitRate, s.QPS, s.QueriesPer1k(), ms(s.P99), s.Errors, s.Breaker)
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
					if err != nil && ctx.Err() != nil {
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
	p := phaseResult{Name: name, Start: r.since(time.Now())}
	h0, q0, c0 := r.hits(), r.env.db.reads.Load(), r.counts()
	err := body(ctx, &p)
	lat, errs := r.rec.takePhase()
	p.End = r.since(time.Now())
	p.Requests, p.Errors = int64(len(lat)), errs
	p.P50, p.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	p.Hits = int64(r.hits() - h0)
	p.Queries = r.env.db.reads.Load() - q0
	p.Lib = r.counts().since(c0)
	return p, err
}

// during runs f with a context that ends after d.
func during(ctx context.Context, d time.Duration, f func(ctx context.Context)) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	f(ctx)
}

// phases runs every phase in turn and reports each as it ends.
func (r *runner) phases(ctx context.Context, report func(i int, p phaseResult)) ([]phaseResult, error) {
	d := r.cfg.Phase
	zipf := r.zipf()
	steps := []struct {
		name string
		body func(ctx context.Context, p *phaseResult) error
	}{
		{phaseCold, func(ctx context.Context, p *phaseResult) error {
			r.cold(ctx, p)
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
			return r.outage(ctx, p, zipf)
		}},
	}
	for i, s := range steps {
		p, err := r.runPhase(ctx, s.name, s.body)
		if err != nil {
			return r.finished, fmt.Errorf("%s: %w", s.name, err)
		}
		p.Sentence = explain(r.impl, p, r.finished)
		r.finished = append(r.finished, p)
		report(i, p)
	}
	return r.finished, nil
}

// cold is the cold start's burst: every process starts at once, and each
// of its first requests asks for the hottest user, whose key is cold.
func (r *runner) cold(ctx context.Context, p *phaseResult) {
	q0, c0 := r.env.db.reads.Load(), r.counts()
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
	p.Cold = &coldResult{
		Gets:  int64(len(r.procs) * r.cfg.Stampede),
		Loads: r.env.db.reads.Load() - q0,
		Lib:   r.counts().since(c0),
	}
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func per1k(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 1000 * float64(a) / float64(b)
}
