// Command demo shows what the cache does under load, races and outages,
// with no setup: Redis is an embedded miniredis and the database is an
// in-memory table with 20 ms of latency per query.
//
//	cd examples/demo && go run .
//	go run . -redis 127.0.0.1:6379   # a real Redis (the outage phase is skipped)
//
// Several Loaders, each with its own Redis client, play the part of
// separate processes of one service. The demo runs five phases:
//
//  1. stampede: every process reads one cold key at once; the database
//     sees one query.
//  2. warm reads: the same key again; every Get is a Redis hit.
//  3. stale-set race: a slow reader loads a row, a writer updates it and
//     invalidates the key before the reader's fill; the fill is rejected.
//  4. write-through: one call updates the row and Redis.
//  5. Redis outage: Gets keep answering from the database, a write is
//     queued for invalidation, and Redis catches up when it is back.
//
// The demo exits with an error if the cache breaks one of its promises.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// config says what the demo runs against and how hard it pushes.
type config struct {
	RedisAddr  string        // a real Redis; "" starts an embedded miniredis
	Latency    time.Duration // of every database query
	Processes  int           // Loaders, each with its own Redis client
	Goroutines int           // concurrent readers per process in the stampede
	Readers    int           // concurrent readers per process in the warm phase
	Reads      int           // Gets per reader in the warm phase
}

func defaultConfig() config {
	return config{Latency: 20 * time.Millisecond, Processes: 8, Goroutines: 100, Readers: 4, Reads: 250}
}

func main() {
	cfg := defaultConfig()
	flag.StringVar(&cfg.RedisAddr, "redis", "", "use the Redis at this address instead of an embedded miniredis")
	flag.DurationVar(&cfg.Latency, "latency", cfg.Latency, "latency of every database query")
	flag.Parse()
	// go-redis logs every failed dial; during the outage phase that is a
	// wall of text. The Loaders count Redis errors instead.
	redis.SetLogger(discardLogger{})
	if err := run(context.Background(), os.Stdout, cfg); err != nil {
		log.Fatal(err)
	}
}

type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// run runs the phases against a fresh demo and prints what each one did to
// w. It returns an error if a phase could not run or saw the cache break a
// promise.
func run(ctx context.Context, w io.Writer, cfg config) error {
	d, err := newDemo(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.close()
	fmt.Fprintf(w, "%d processes (Loaders with their own Redis client), database latency %v, Redis: %s\n",
		cfg.Processes, cfg.Latency, d.redisName())

	phases := []struct {
		title string
		run   func(context.Context) (outcome, error)
	}{
		{fmt.Sprintf("stampede: %d Gets of one cold key, all at once", cfg.Processes*cfg.Goroutines),
			func(ctx context.Context) (outcome, error) { return d.stampede(ctx, "1") }},
		{fmt.Sprintf("warm reads: %d Gets of that key, %d at a time", cfg.Processes*cfg.Readers*cfg.Reads, cfg.Processes*cfg.Readers),
			func(ctx context.Context) (outcome, error) { return d.warm(ctx, "1") }},
		{"stale-set race: a slow reader loads a row; a writer updates it and invalidates before the reader's fill",
			func(ctx context.Context) (outcome, error) { return d.staleSetRace(ctx, "2") }},
		{"write-through: update the row and Redis in one call",
			func(ctx context.Context) (outcome, error) { return d.writeThrough(ctx, "3") }},
		{"Redis outage: stop Redis, read and write, start it again",
			func(ctx context.Context) (outcome, error) { return d.outage(ctx, "4") }},
	}
	var broken []error
	for i, p := range phases {
		fmt.Fprintf(w, "\n%d. %s\n", i+1, p.title)
		if d.mr == nil && i == len(phases)-1 {
			fmt.Fprintf(w, "   skipped: the demo can only stop its embedded miniredis, not %s\n", cfg.RedisAddr)
			break
		}
		o, err := p.run(ctx)
		if err != nil {
			return fmt.Errorf("phase %d: %w", i+1, err)
		}
		o.print(w)
		for _, b := range o.broken() {
			fmt.Fprintf(w, "   !! %s\n", b)
			broken = append(broken, fmt.Errorf("phase %d: %s", i+1, b))
		}
	}
	return errors.Join(broken...)
}

// outcome is what a phase measured.
type outcome interface {
	print(w io.Writer)
	// broken lists the promises the phase saw broken.
	broken() []string
}

// demo is the running cast: the fake database, Redis, and one Loader per
// "process".
type demo struct {
	cfg    config
	db     *fakeDB
	mr     *miniredis.Miniredis // nil when a real Redis is used
	prefix string               // of every key this run writes
	procs  []process
}

// process is what one process of the service would hold: its own Redis
// client and its own Loader.
type process struct {
	rdb   *redis.Client
	users *cache.Loader[User]
}

func newDemo(ctx context.Context, cfg config) (*demo, error) {
	d := &demo{
		cfg: cfg,
		db: newFakeDB(cfg.Latency,
			User{ID: "1", Name: "Ada Lovelace", Version: 1},
			User{ID: "2", Name: "Alan Turing", Version: 1},
			User{ID: "3", Name: "Grace Hopper", Version: 1},
			User{ID: "4", Name: "Edsger Dijkstra", Version: 1},
		),
		prefix: "cache-demo:" + randomHex() + ":",
	}
	addr := cfg.RedisAddr
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, err
		}
		d.mr, addr = mr, mr.Addr()
	}
	for range cfg.Processes {
		rdb := newClient(addr)
		users, err := d.newLoader(rdb, d.db.get)
		if err != nil {
			rdb.Close()
			d.close()
			return nil, err
		}
		d.procs = append(d.procs, process{rdb: rdb, users: users})
	}
	// Each process has been running: its connection pool is open.
	for _, p := range d.procs {
		if err := p.rdb.Ping(ctx).Err(); err != nil {
			d.close()
			return nil, fmt.Errorf("redis at %s: %w", addr, err)
		}
	}
	return d, nil
}

func newClient(addr string) *redis.Client {
	// ContextTimeoutEnabled lets Options.RedisTimeout bound every call.
	return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
}

func (d *demo) newLoader(rdb *redis.Client, load cache.LoadFunc[User]) (*cache.Loader[User], error) {
	return cache.New(rdb, "user", load, &cache.Options{Prefix: d.prefix, TTL: time.Minute})
}

func (d *demo) redisName() string {
	if d.mr != nil {
		return "embedded miniredis"
	}
	return d.cfg.RedisAddr
}

// close stops the Loaders, deletes this run's keys and closes Redis.
func (d *demo) close() {
	ctx := context.Background()
	for _, p := range d.procs {
		p.users.Close()
	}
	if d.mr == nil && len(d.procs) > 0 {
		rdb := d.procs[0].rdb
		iter := rdb.Scan(ctx, 0, d.prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	}
	for _, p := range d.procs {
		p.rdb.Close()
	}
	if d.mr != nil {
		d.mr.Close()
	}
}

func show(u User) string { return fmt.Sprintf("v%d %q", u.Version, u.Name) }

func randomHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
