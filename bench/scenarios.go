package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Params sizes the scenarios; Quick shrinks everything to seconds.
type Params struct {
	Quick bool

	HitKeys     int
	HitSeqOps   int
	HitParDur   time.Duration
	HitPar      []int
	MissOps     int
	StampInst   int
	StampG      int
	HotG        int
	HotTTL      time.Duration
	HotPeriods  int
	RaceKeys    int
	RaceInst    int
	RaceReaders int
	RaceWriters int
	RaceWrites  int
	OutBefore   time.Duration
	OutBlack    time.Duration
	OutAfter    time.Duration
	OutG        int
	ZipfKeys    int
	ZipfDur     time.Duration
	ZipfG       int
}

func FullParams() Params {
	return Params{
		HitKeys: 100, HitSeqOps: 2000, HitParDur: 300 * time.Millisecond, HitPar: []int{1, 16, 64, 256},
		MissOps:   200,
		StampInst: 8, StampG: 128,
		HotG: 200, HotTTL: time.Second, HotPeriods: 10,
		RaceKeys: 20, RaceInst: 4, RaceReaders: 16, RaceWriters: 4, RaceWrites: 400,
		OutBefore: time.Second, OutBlack: 3 * time.Second, OutAfter: 2 * time.Second, OutG: 16,
		ZipfKeys: 10000, ZipfDur: 5 * time.Second, ZipfG: 16,
	}
}

func QuickParams() Params {
	return Params{
		Quick:   true,
		HitKeys: 10, HitSeqOps: 50, HitParDur: 20 * time.Millisecond, HitPar: []int{1, 16},
		MissOps:   10,
		StampInst: 2, StampG: 8,
		HotG: 8, HotTTL: time.Second, HotPeriods: 1,
		RaceKeys: 5, RaceInst: 2, RaceReaders: 4, RaceWriters: 2, RaceWrites: 20,
		OutBefore: 50 * time.Millisecond, OutBlack: 150 * time.Millisecond, OutAfter: 100 * time.Millisecond, OutG: 2,
		ZipfKeys: 200, ZipfDur: 150 * time.Millisecond, ZipfG: 4,
	}
}

// Scenario runs one implementation and returns its table cells and the
// primary metric (for the "vs best peer" column).
type Scenario struct {
	Name    string
	Title   string
	Header  []string
	Metric  string // name of the primary metric
	Lower   bool   // lower metric is better
	TTL     time.Duration
	Run     func(ctx context.Context, f Factory) ([]string, float64, error)
	Extra   func(ctx context.Context) ([][]string, []float64, error) // baseline rows and their primary metrics
	Explain string
}

// Runner carries the environment and parameters.
type Runner struct {
	Env *Env
	P   Params
}

func (r *Runner) cfg(scn string, f Factory, ttl time.Duration, load LoadFn) Config {
	return Config{Env: r.Env, Namespace: r.Env.Namespace(scn, f.Name), RedisAddr: r.Env.RedisAddr, TTL: ttl, Load: load}
}

func id(i int) string { return strconv.Itoa(i) }

// ---- hit ----

func (r *Runner) hit(ctx context.Context, f Factory) ([]string, float64, error) {
	var c Counter
	im, err := f.New(r.cfg("hit", f, time.Minute, c.Wrap(r.Env, nil)))
	if err != nil {
		return nil, 0, err
	}
	defer im.Close()
	for i := 1; i <= r.P.HitKeys; i++ {
		if _, err := im.Get(ctx, id(i)); err != nil {
			return nil, 0, err
		}
	}
	time.Sleep(20 * time.Millisecond) // async setters (gocache)
	for i := 1; i <= r.P.HitKeys; i++ {
		if _, err := im.Get(ctx, id(i)); err != nil {
			return nil, 0, err
		}
	}
	loads0 := c.Load()
	return r.hitMeasure(ctx, func(i int) error {
		_, err := im.Get(ctx, id(1+i%r.P.HitKeys))
		return err
	}, func() int64 { return c.Load() - loads0 })
}

func (r *Runner) hitMeasure(ctx context.Context, get func(i int) error, loads func() int64) ([]string, float64, error) {
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start := time.Now()
	for i := 0; i < r.P.HitSeqOps; i++ {
		if err := get(i); err != nil {
			return nil, 0, err
		}
	}
	el := time.Since(start)
	runtime.ReadMemStats(&m1)
	nsop := float64(el.Nanoseconds()) / float64(r.P.HitSeqOps)
	allocs := float64(m1.Mallocs-m0.Mallocs) / float64(r.P.HitSeqOps)
	bytes := float64(m1.TotalAlloc-m0.TotalAlloc) / float64(r.P.HitSeqOps)
	cells := []string{fmt.Sprintf("%.1f", nsop/1000), fmt.Sprintf("%.0f", allocs), fmt.Sprintf("%.0f", bytes)}
	for _, g := range r.P.HitPar {
		var n, errs atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(r.P.HitParDur)
		for w := 0; w < g; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; time.Now().Before(deadline); i += g {
					if err := get(i); err != nil {
						errs.Add(1)
					}
					n.Add(1)
				}
			}(w)
		}
		wg.Wait()
		if errs.Load() > 0 {
			return nil, 0, fmt.Errorf("%d errors at %d goroutines", errs.Load(), g)
		}
		cells = append(cells, fmt.Sprintf("%.0f", float64(n.Load())/r.P.HitParDur.Seconds()))
	}
	l := "—"
	if loads != nil {
		l = strconv.FormatInt(loads(), 10)
	}
	cells = append(cells, l)
	return cells, nsop / 1000, nil
}

// hitRaw is the baseline: GET of the encoded row and its JSON decode,
// under a 50 ms deadline, as a hand-written cache would (the rows are
// written at keys of their own, under this library's prefix).
func (r *Runner) hitRaw(ctx context.Context) ([][]string, []float64, error) {
	var c Counter
	f := Factory{Name: "raw"}
	cfg := r.cfg("hitraw", f, time.Minute, c.Wrap(r.Env, nil))
	im, err := newLib(nil)(cfg)
	if err != nil {
		return nil, nil, err
	}
	defer im.Close()
	l := im.(*libImpl)
	rdb := redis.NewClient(&redis.Options{Addr: r.Env.RedisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	rawKey := func(i int) string { return l.l.Key("raw:" + id(i)) }
	for i := 1; i <= r.P.HitKeys; i++ {
		row, err := l.Get(ctx, id(i))
		if err != nil {
			return nil, nil, err
		}
		b, err := json.Marshal(row)
		if err != nil {
			return nil, nil, err
		}
		if err := rdb.Set(ctx, rawKey(i), b, time.Minute).Err(); err != nil {
			return nil, nil, err
		}
	}
	get := func(i int) error {
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		b, err := rdb.Get(cctx, rawKey(1+i%r.P.HitKeys)).Bytes()
		if err != nil {
			return err
		}
		var row Row
		return json.Unmarshal(b, &row)
	}
	cells, m, err := r.hitMeasure(ctx, get, nil)
	if err != nil {
		return nil, nil, err
	}
	return [][]string{append([]string{"raw go-redis GET+decode (baseline)"}, append(cells, "")...)}, []float64{m}, nil
}

// ---- miss ----

func (r *Runner) miss(ctx context.Context, f Factory) ([]string, float64, error) {
	var c Counter
	im, err := f.New(r.cfg("miss", f, time.Minute, c.Wrap(r.Env, func() time.Duration { return time.Millisecond })))
	if err != nil {
		return nil, 0, err
	}
	defer im.Close()
	var lat Lat
	for i := 1; i <= r.P.MissOps; i++ {
		s := time.Now()
		if _, err := im.Get(ctx, id(i)); err != nil {
			return nil, 0, err
		}
		lat.Add(time.Since(s))
	}
	var sum time.Duration
	for _, d := range lat.d {
		sum += d
	}
	mean := sum / time.Duration(lat.N())
	return []string{us(mean), us(lat.P(0.5)), us(lat.P(0.99)), strconv.FormatInt(c.Load(), 10)}, float64(mean) / 1000, nil
}

// ---- stampede ----

func (r *Runner) stampede(ctx context.Context, f Factory) ([]string, float64, error) {
	var c Counter
	load := c.Wrap(r.Env, func() time.Duration { return 50 * time.Millisecond })
	cfg := r.cfg("stampede", f, time.Minute, load)
	ims := make([]Impl, r.P.StampInst)
	for i := range ims {
		im, err := f.New(cfg)
		if err != nil {
			return nil, 0, err
		}
		defer im.Close()
		ims[i] = im
	}
	var lat Lat
	var errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	startc := make(chan struct{})
	for _, im := range ims {
		for g := 0; g < r.P.StampG; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-startc
				s := time.Now()
				row, err := im.Get(ctx, "7")
				lat.Add(time.Since(s))
				if err == nil && row.ID != 7 {
					err = fmt.Errorf("wrong row %+v", row)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}()
		}
	}
	close(startc)
	wg.Wait()
	e := strconv.FormatInt(errs.Load(), 10)
	if v := firstErr.Load(); v != nil {
		e += " (" + trunc(v.(string), 60) + ")"
	}
	return []string{strconv.FormatInt(c.Load(), 10), e, ms(lat.P(0.5)), ms(lat.P(0.99)), ms(lat.P(1))}, float64(c.Load()), nil
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ---- hot-key expiry ----

func (r *Runner) hotkey(ctx context.Context, f Factory) ([]string, float64, error) {
	if f.MinTTL > r.P.HotTTL {
		return nil, 0, fmt.Errorf("n/a: cannot hold a %v TTL (minimum %v)", r.P.HotTTL, f.MinTTL)
	}
	c := Counter{keep: true}
	im, err := f.New(r.cfg("hotkey", f, r.P.HotTTL, c.Wrap(r.Env, func() time.Duration { return 10 * time.Millisecond })))
	if err != nil {
		return nil, 0, err
	}
	defer im.Close()
	if _, err := im.Get(ctx, "3"); err != nil {
		return nil, 0, err
	}
	dur := r.P.HotTTL * time.Duration(r.P.HotPeriods)
	start := time.Now()
	c.mu.Lock()
	c.times = c.times[:0]
	c.mu.Unlock()
	base := c.Load()
	deadline := start.Add(dur)
	var lat Lat
	var errs, n atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < r.P.HotG; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for time.Now().Before(deadline) {
				s := time.Now()
				if _, err := im.Get(ctx, "3"); err != nil {
					errs.Add(1)
				}
				local = append(local, time.Since(s))
				n.Add(1)
				time.Sleep(time.Millisecond)
			}
			lat.Merge(local)
		}()
	}
	wg.Wait()
	loads := c.Load() - base
	c.mu.Lock()
	times := c.times
	c.mu.Unlock()
	maxw := 0
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < 100*time.Millisecond {
			j++
		}
		maxw = max(maxw, j-i)
	}
	per := float64(loads) / float64(r.P.HotPeriods)
	return []string{strconv.FormatInt(n.Load(), 10), strconv.FormatInt(loads, 10), fmt.Sprintf("%.2f", per), strconv.Itoa(maxw),
		strconv.FormatInt(errs.Load(), 10), ms(lat.P(0.99))}, float64(maxw), nil
}

// ---- race ----

func (r *Runner) race(ctx context.Context, f Factory) ([]string, float64, error) {
	var c Counter
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	slow := func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(rng.Int64N(int64(5 * time.Millisecond)))
	}
	cfg := r.cfg("race", f, 20*time.Second, c.Wrap(r.Env, slow))
	ims := make([]Impl, r.P.RaceInst)
	for i := range ims {
		im, err := f.New(cfg)
		if err != nil {
			return nil, 0, err
		}
		defer im.Close()
		ims[i] = im
	}
	// committed[k] is the highest version whose write+invalidation completed.
	committed := make([]atomic.Int64, r.P.RaceKeys+1)
	vers, err := r.Env.Versions(ctx)
	if err != nil {
		return nil, 0, err
	}
	for k := 1; k <= r.P.RaceKeys; k++ {
		committed[k].Store(vers[id(k)])
	}
	var reads, staleReads, errs, writes atomic.Int64
	stop := make(chan struct{})
	var rwg, wwg sync.WaitGroup
	for g := 0; g < r.P.RaceReaders; g++ {
		rwg.Add(1)
		go func(g int) {
			defer rwg.Done()
			im := ims[g%len(ims)]
			for i := g; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := 1 + (i*7+g)%r.P.RaceKeys
				floor := committed[k].Load()
				row, err := im.Get(ctx, id(k))
				reads.Add(1)
				if err != nil {
					errs.Add(1)
					continue
				}
				if row.Version < floor {
					staleReads.Add(1)
				}
			}
		}(g)
	}
	per := r.P.RaceWrites / r.P.RaceWriters
	for g := 0; g < r.P.RaceWriters; g++ {
		wwg.Add(1)
		go func(g int) {
			defer wwg.Done()
			im := ims[g%len(ims)]
			for i := 0; i < per; i++ {
				k := 1 + rand.IntN(r.P.RaceKeys)
				v, err := im.Write(ctx, id(k), "w"+strconv.Itoa(i))
				if err != nil {
					errs.Add(1)
					continue
				}
				writes.Add(1)
				for {
					cur := committed[k].Load()
					if v <= cur || committed[k].CompareAndSwap(cur, v) {
						break
					}
				}
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			}
		}(g)
	}
	wwg.Wait()
	close(stop)
	rwg.Wait()
	time.Sleep(300 * time.Millisecond) // quiescence: in-flight fills, async setters
	vers, err = r.Env.Versions(ctx)
	if err != nil {
		return nil, 0, err
	}
	staleKeys := 0
	for k := 1; k <= r.P.RaceKeys; k++ {
		for _, im := range ims {
			row, err := im.Get(ctx, id(k))
			if err != nil || row.Version != vers[id(k)] {
				staleKeys++
				break
			}
		}
	}
	pct := 0.0
	if reads.Load() > 0 {
		pct = 100 * float64(staleReads.Load()) / float64(reads.Load())
	}
	return []string{strconv.FormatInt(reads.Load(), 10), strconv.FormatInt(writes.Load(), 10),
		fmt.Sprintf("%d (%.2f%%)", staleReads.Load(), pct), strconv.Itoa(staleKeys), strconv.FormatInt(c.Load(), 10),
		strconv.FormatInt(errs.Load(), 10)}, float64(staleReads.Load()), nil
}

// ---- redis outage ----

func (r *Runner) outage(ctx context.Context, f Factory) ([]string, float64, error) {
	px, err := NewProxy(r.Env.RedisAddr)
	if err != nil {
		return nil, 0, err
	}
	defer px.Close()
	var c Counter
	cfg := r.cfg("outage", f, time.Minute, c.Wrap(r.Env, func() time.Duration { return time.Millisecond }))
	cfg.RedisAddr = px.Addr()
	im, err := f.New(cfg)
	if err != nil {
		return nil, 0, err
	}
	defer im.Close()
	const keys = 50
	for i := 1; i <= keys; i++ {
		_, _ = im.Get(ctx, id(i))
	}
	type sample struct {
		start, end time.Time
		err        bool
	}
	var mu sync.Mutex
	var samples []sample
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < r.P.OutG; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var local []sample
			defer func() {
				mu.Lock()
				samples = append(samples, local...)
				mu.Unlock()
			}()
			for i := g; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				s := time.Now()
				_, err := im.Get(gctx, id(1+i%keys))
				cancel()
				local = append(local, sample{s, time.Now(), err != nil})
				time.Sleep(time.Millisecond)
			}
		}(g)
	}
	time.Sleep(r.P.OutBefore)
	blackAt := time.Now()
	px.Blackhole(true)
	time.Sleep(r.P.OutBlack)
	px.Blackhole(false)
	healAt := time.Now()
	time.Sleep(r.P.OutAfter)
	close(stop)
	wg.Wait()
	// A Get belongs to the blackhole phase if it was running at any time
	// while the proxy was blackholed.
	type phase struct {
		lat  Lat
		errs int
	}
	var phases [3]phase
	for _, sm := range samples {
		ph := 0
		switch {
		case !sm.start.Before(healAt):
			ph = 2
		case sm.end.After(blackAt):
			ph = 1
		}
		phases[ph].lat.Add(sm.end.Sub(sm.start))
		if sm.err {
			phases[ph].errs++
		}
	}
	var cells []string
	for i := range phases {
		p := &phases[i]
		cells = append(cells, fmt.Sprintf("%d / %d", p.errs, p.lat.N()),
			ms(p.lat.P(0.5))+" / "+ms(p.lat.P(0.99))+" / "+ms(p.lat.P(1)))
	}
	return cells, float64(phases[1].lat.P(0.99)) / 1e6, nil
}

// ---- zipf ----

func (r *Runner) zipf(ctx context.Context, f Factory) ([]string, float64, error) {
	var c Counter
	im, err := f.New(r.cfg("zipf", f, time.Minute, c.Wrap(r.Env, nil)))
	if err != nil {
		return nil, 0, err
	}
	defer im.Close()
	var reads, writes, errs atomic.Int64
	var lat Lat
	deadline := time.Now().Add(r.P.ZipfDur)
	var wg sync.WaitGroup
	for g := 0; g < r.P.ZipfG; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			z := rand.NewZipf(rng, 1.1, 1, uint64(r.P.ZipfKeys-1))
			var local []time.Duration
			for time.Now().Before(deadline) {
				k := id(1 + int(z.Uint64()))
				if rng.IntN(100) < 5 {
					if _, err := im.Write(ctx, k, "z"); err != nil {
						errs.Add(1)
					}
					writes.Add(1)
					continue
				}
				s := time.Now()
				if _, err := im.Get(ctx, k); err != nil {
					errs.Add(1)
				}
				local = append(local, time.Since(s))
				reads.Add(1)
			}
			lat.Merge(local)
		}(g)
	}
	wg.Wait()
	req := reads.Load() + writes.Load()
	hit := 100 * (1 - float64(c.Load())/float64(max(reads.Load(), 1)))
	per1k := 1000 * float64(c.Load()) / float64(max(req, 1))
	return []string{strconv.FormatInt(req, 10), fmt.Sprintf("%.1f", hit), fmt.Sprintf("%.1f", per1k),
		ms(lat.P(0.5)), ms(lat.P(0.99)), strconv.FormatInt(errs.Load(), 10)}, per1k, nil
}

// Scenarios lists the scenarios in run order.
func (r *Runner) Scenarios() []Scenario {
	return []Scenario{
		{Name: "hit", Title: "Hit: warm keys", Header: append(append([]string{"implementation", "µs/op (seq)", "allocs/op", "B/op"},
			parHeaders(r.P.HitPar)...), "loads during"), Metric: "µs/op", Lower: true, Run: r.hit,
			Extra:   r.hitRaw,
			Explain: fmt.Sprintf("%d warm keys read round-robin; %d sequential Gets; throughput for %v per concurrency level. In-process caches (go-redis/cache with TinyLFU, sturdyc, this library with its tier) answer hits from memory (the strict tier after a barrier PING).", r.P.HitKeys, r.P.HitSeqOps, r.P.HitParDur)},
		{Name: "miss", Title: "Miss: cold read, 1 ms load", Header: []string{"implementation", "mean µs", "p50 µs", "p99 µs", "loads"},
			Metric: "mean µs", Lower: true, Run: r.miss,
			Explain: fmt.Sprintf("%d distinct cold keys read once each, sequentially; the load sleeps 1 ms after its SELECT.", r.P.MissOps)},
		{Name: "stampede", Title: "Stampede: one cold key", Header: []string{"implementation", "loads", "errors", "p50 ms", "p99 ms", "max ms"},
			Metric: "loads", Lower: true, Run: r.stampede,
			Explain: fmt.Sprintf("%d instances (separate Redis clients) × %d goroutines Get one cold key at once; the load takes 50 ms.", r.P.StampInst, r.P.StampG)},
		{Name: "hotkey", Title: "Hot-key expiry", Header: []string{"implementation", "Gets", "loads", "loads/period", "max loads in 100 ms", "errors", "p99 ms"},
			Metric: "max loads in 100 ms", Lower: true, Run: r.hotkey,
			Explain: fmt.Sprintf("One key, TTL %v, %d goroutines (1 ms pause between Gets) over %d TTL periods; the load takes 10 ms. The ideal is 1 load per period.", r.P.HotTTL, r.P.HotG, r.P.HotPeriods)},
		{Name: "race", Title: "Invalidation race (slow loader)", Header: []string{"implementation", "reads", "writes", "stale reads", "stale keys", "loads", "errors"},
			Metric: "stale reads", Lower: true, Run: r.race,
			Explain: fmt.Sprintf("%d rows, %d instances, %d readers, %d writers (UPDATE then the implementation's invalidation), %d writes; the loader sleeps 0–5 ms after its SELECT. A stale read is a Get that returns a version older than one whose write+invalidation completed before the Get began; a stale key is a key for which some instance still returns an old version 300 ms after writers and readers stopped (TTL 20 s). The in-process caches (go-redis/cache TinyLFU, sturdyc, this library's tier) are read here too.", r.P.RaceKeys, r.P.RaceInst, r.P.RaceReaders, r.P.RaceWriters, r.P.RaceWrites)},
		{Name: "outage", Title: "Redis outage (blackhole through a TCP proxy)", Header: []string{"implementation", "before: errors / Gets", "before: p50/p99/max ms", "blackhole: errors / Gets", "blackhole: p50/p99/max ms", "after: errors / Gets", "after: p50/p99/max ms"},
			Metric: "blackhole p99 ms", Lower: true, Run: r.outage,
			Explain: fmt.Sprintf("%d goroutines over 50 warm keys; %v normal, %v blackholed (the proxy holds every byte), %v after healing; a Get counts in the blackhole phase if it was running at any moment of the blackhole. Each Get has a 10 s deadline. Peers use go-redis defaults as in their READMEs (ReadTimeout 3 s, no ContextTimeoutEnabled); this library requires ContextTimeoutEnabled.", r.P.OutG, r.P.OutBefore, r.P.OutBlack, r.P.OutAfter)},
		{Name: "zipf", Title: "Zipf workload", Header: []string{"implementation", "requests", "hit rate %", "DB reads / 1k req", "p50 ms", "p99 ms", "errors"},
			Metric: "DB reads / 1k", Lower: true, Run: r.zipf,
			Explain: fmt.Sprintf("%d keys, Zipf s=1.1, %d goroutines, 95%% Get / 5%% write (UPDATE + invalidate), %v, cold start.", r.P.ZipfKeys, r.P.ZipfG, r.P.ZipfDur)},
	}
}

func parHeaders(ps []int) []string {
	var h []string
	for _, p := range ps {
		h = append(h, fmt.Sprintf("Gets/s ×%d", p))
	}
	return h
}
