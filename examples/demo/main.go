// Command demo shows what the cache does under load, races and outages,
// next to a textbook cache-aside on the same workload, with no setup:
// Redis is an embedded miniredis and MySQL is an embedded go-mysql-server
// reached through go-sql-driver/mysql, like a real one.
//
//	cd examples/demo && go run .           # every implementation, ~1 minute
//	go run . -quick                         # a few seconds per implementation
//	go run . -impl cache                    # only this library (or naive, tier, a list)
//	go run . -redis 127.0.0.1:6379 -mysql 'root@tcp(127.0.0.1:3306)/test'
//
// The implementations are this library (cache), textbook cache-aside
// (naive), and this library with its in-process tier (tier, Options.Local
// strict). The tier needs CLIENT TRACKING, which miniredis lacks: with the
// embedded Redis its run is skipped, and says so; run it with -redis.
//
// Several processes of one service (each with its own Redis client and
// cache) run closed-loop clients through five phases:
//
//  1. cold start: every process asks for the hottest user at once, then
//     Zipf traffic warms the cache.
//  2. steady Zipf traffic.
//  3. a hot key expiring: everyone reads one user whose TTL is 300 ms.
//  4. writes racing slow readers: a writer renames the hottest users twice
//     in quick succession, and readers that SELECTed the old row are held
//     until the second write and a fresh fill are done; are any served
//     stale, during the phase and afterwards?
//  5. Redis going dark and coming back (embedded Redis only), until the
//     hit rate has recovered; how long that took.
//
// A status line (requests/s, hit rate, database queries/s and per 1,000
// requests, p99, breaker) is updated every tick, and each phase ends with a
// sentence of what it measured. demo-report.html has the same sentences, a
// summary table and SVG charts over time; it needs no network to render.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"
)

// config says what the demo runs against and how hard it pushes.
type config struct {
	RedisAddr  string        // a real Redis; "" starts an embedded miniredis
	MySQLDSN   string        // a real MySQL; "" starts an embedded go-mysql-server
	Impls      []string      // implementations to run, in order
	Out        string        // path of the HTML report; "" writes none
	Latency    time.Duration // added to every database query
	RaceWait   time.Duration // bound on each wait of a write pair in the race phase
	WriteEvery time.Duration // pause between write pairs in the race phase
	Processes  int           // each with its own Redis client and cache
	Workers    int           // closed-loop clients per process
	Stampede   int           // Gets per process of the cold key at cold start
	Think      time.Duration // a client's pause between requests
	Rows       int           // users in the table
	Phase      time.Duration // length of each phase
	// MaxRecovery bounds how long the outage phase waits, after Redis is
	// back, for the hit rate to recover.
	MaxRecovery time.Duration
	Tick        time.Duration // status line and chart resolution
	Live        bool          // print the status line
}

func defaultConfig() config {
	return config{
		Impls:       slices.Clone(allImpls),
		Out:         "demo-report.html",
		Latency:     2 * time.Millisecond,
		RaceWait:    300 * time.Millisecond,
		WriteEvery:  10 * time.Millisecond,
		Processes:   8,
		Workers:     4,
		Stampede:    32,
		Think:       5 * time.Millisecond,
		Rows:        10000,
		Phase:       5 * time.Second,
		MaxRecovery: 15 * time.Second,
		Tick:        time.Second,
		Live:        true,
	}
}

// quick shortens cfg to a few seconds per implementation.
func (cfg *config) quick() {
	cfg.Phase = time.Second
	cfg.MaxRecovery = 4 * time.Second
	cfg.Tick = 200 * time.Millisecond
	cfg.Rows = 2000
}

func main() {
	cfg := defaultConfig()
	impl := flag.String("impl", "all", "implementations: all, both (cache and naive), or a comma-separated list of cache (this library), naive (textbook cache-aside) and tier (this library with its in-process tier, strict; needs -redis)")
	quick := flag.Bool("quick", false, "a shortened run (1 s phases)")
	flag.StringVar(&cfg.RedisAddr, "redis", "", "use the Redis at this address instead of an embedded miniredis (the outage phase is then skipped)")
	flag.StringVar(&cfg.MySQLDSN, "mysql", "", "use the MySQL/MariaDB at this DSN (go-sql-driver form) instead of an embedded server; a uniquely named table is created and dropped")
	flag.StringVar(&cfg.Out, "out", cfg.Out, "path of the HTML report")
	flag.DurationVar(&cfg.Latency, "latency", cfg.Latency, "latency added to every database query")
	flag.Parse()
	impls, err := parseImpls(*impl)
	if err != nil {
		log.Fatal(err)
	}
	cfg.Impls = impls
	if *quick {
		cfg.quick()
	}
	// go-redis logs every failed dial; during the outage phase that is a
	// wall of text. The requests count errors instead.
	redis.SetLogger(discardLogger{})
	if _, err := run(context.Background(), os.Stdout, cfg); err != nil {
		log.Fatal(err)
	}
}

type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// env is what every implementation's run shares: the database and Redis.
type env struct {
	db *store
	mr *miniredis.Miniredis // nil when a real Redis is used
	// addr is Redis's address.
	addr string
}

// run runs every implementation in cfg.Impls through the phases, prints
// what happened to w and writes the report to cfg.Out.
func run(ctx context.Context, w io.Writer, cfg config) ([]runResult, error) {
	t0 := time.Now()
	// go-mysql-server logs every connection through logrus.
	logrus.SetLevel(logrus.WarnLevel)
	db, err := openStore(ctx, cfg.MySQLDSN, cfg.Rows, cfg.Latency)
	if err != nil {
		return nil, err
	}
	defer db.close()
	e := &env{db: db, addr: cfg.RedisAddr}
	if e.addr == "" {
		if e.mr, err = miniredis.Run(); err != nil {
			return nil, err
		}
		defer e.mr.Close()
		e.addr = e.mr.Addr()
		// miniredis only expires keys when told time has passed.
		cctx, stop := context.WithCancel(ctx)
		defer stop()
		go advanceClock(cctx, e.mr)
	}
	mysqlName, redisName := "embedded go-mysql-server", "embedded miniredis"
	if cfg.MySQLDSN != "" {
		mysqlName = "MySQL table " + db.table
	}
	if cfg.RedisAddr != "" {
		redisName = "Redis at " + cfg.RedisAddr
	}
	setup := fmt.Sprintf("%d processes × %d clients, %d users, Zipf s=1.1, database latency +%v; %s, %s",
		cfg.Processes, cfg.Workers, cfg.Rows, cfg.Latency, mysqlName, redisName)
	fmt.Fprintf(w, "%s (ready in %v)\n", setup, time.Since(t0).Round(time.Millisecond))

	var results []runResult
	for _, impl := range cfg.Impls {
		fmt.Fprintf(w, "\n== %s ==\n", implTitle(impl))
		r, err := runImpl(ctx, w, cfg, e, impl)
		if err != nil {
			return results, fmt.Errorf("%s: %w", impl, err)
		}
		results = append(results, r)
	}
	if len(results) >= 2 {
		printComparison(w, results)
	}
	if cfg.Out != "" {
		if err := writeReport(cfg.Out, cfg, setup, results); err != nil {
			return results, err
		}
		fmt.Fprintf(w, "\nreport: %s\n", absPath(cfg.Out))
	}
	return results, nil
}

func implTitle(impl string) string {
	switch impl {
	case implLibrary:
		return "cache: this library (github.com/f4df6ac3/cache, default options)"
	case implTier:
		return "tier: this library with its in-process tier (Options.Local, strict: MaxLag 0)"
	}
	return "naive: textbook cache-aside (GET; on a miss SELECT + SET EX; on a write UPDATE + DEL)"
}

// runImpl starts cfg.Processes processes of impl and runs the phases.
func runImpl(ctx context.Context, w io.Writer, cfg config, e *env, impl string) (runResult, error) {
	r := &runner{cfg: cfg, impl: impl, env: e}
	prefix := "cache-demo:" + randomHex() + ":"
	defer r.close(prefix)
	if impl == implTier {
		if why := tierUnavailable(ctx, e, prefix); why != "" {
			fmt.Fprintf(w, "skipped: %s.\n", why)
			return skippedRun(impl, why), nil
		}
	}
	newUsers := newLibrary
	switch impl {
	case implNaive:
		newUsers = newNaive
	case implTier:
		newUsers = newTier
	}
	for range cfg.Processes {
		// ContextTimeoutEnabled lets Options.RedisTimeout bound every call.
		rdb := redis.NewClient(&redis.Options{Addr: e.addr, ContextTimeoutEnabled: true})
		r.rdbs = append(r.rdbs, rdb)
		u, err := newUsers(rdb, e.db, prefix)
		if err != nil {
			return runResult{}, err
		}
		r.procs = append(r.procs, u)
	}
	if impl == implTier {
		if why := waitStreams(ctx, r.procs); why != "" {
			fmt.Fprintf(w, "skipped: %s.\n", why)
			return skippedRun(impl, why), nil
		}
	}
	r.start = time.Now()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.sampleLoop(sctx, w); close(done) }()

	var (
		phases []phaseResult
		err    error
	)
	// Print each phase's sentence as it ends: run the phases one by one
	// through a wrapper that reports.
	phases, err = r.phases(ctx, func(i int, p phaseResult) {
		if cfg.Live {
			fmt.Fprint(w, "\r\033[K")
		}
		fmt.Fprintf(w, "%d. %s (%.1fs)\n   %s\n", i+1, p.Name, p.End-p.Start, p.Sentence)
	})
	stop()
	<-done
	if cfg.Live {
		fmt.Fprint(w, "\r\033[K")
	}
	return runResult{Impl: impl, Samples: r.samples, Phases: phases}, err
}

// close stops the processes and deletes this run's keys from Redis.
func (r *runner) close(prefix string) {
	for _, p := range r.procs {
		p.Close()
	}
	if len(r.rdbs) > 0 && r.env.mr == nil {
		ctx := context.Background()
		rdb := r.rdbs[0]
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	}
	for _, c := range r.rdbs {
		c.Close()
	}
}

// printComparison prints the runs' key numbers side by side.
func printComparison(w io.Writer, rs []runResult) {
	fmt.Fprintf(w, "\n%-44s", "")
	for _, r := range rs {
		fmt.Fprintf(w, " %18s", r.Impl)
	}
	fmt.Fprintln(w)
	for _, h := range headlines(rs) {
		fmt.Fprintf(w, "%-44s", h.Name)
		for _, v := range h.Values {
			fmt.Fprintf(w, " %18s", v)
		}
		fmt.Fprintln(w)
	}
}

// advanceClock moves mr's clock with the wall clock, so that TTLs run out,
// until ctx is done. (miniredis's own ClockTTL walks every key on every
// command, too slow for this workload.)
func advanceClock(ctx context.Context, mr *miniredis.Miniredis) {
	const step = 20 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			mr.FastForward(now.Sub(last))
			last = now
		}
	}
}

func randomHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
