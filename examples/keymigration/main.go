// Command keymigration moves cached profiles from one key format to another
// during a rollout without losing the hit rate.
//
// Version 1 of a service caches profiles at user#2:{id}:profile as
// {name, email}; version 2 caches them at v2:user#2:{id}:profile as
// {display_name, contact: {email}}. Both read the same profiles table in
// MySQL. Deployed naively, version 2 starts from an empty namespace and every
// Get of its first pass reaches the database (the field report: a hit rate of
// 94% fell to 0.02% and melted the database). With
// Options.PreviousKeyPrefix naming the old format and Options.Migrate
// converting its values, a miss in the new format is answered from the old
// entry instead; Loader.Warm then fills the new format for the keys the
// traffic has not touched yet, before version 1 is retired.
//
// The program runs the whole story on real servers and prints, for each
// phase, the hit rate as the database sees it: the share of Gets that did not
// reach it.
//
//	go run ./examples/keymigration -dsn 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379
//
// It creates a uniquely named table (dropped at the end) and keeps its Redis
// keys under a unique prefix (deleted at the end with SCAN + DEL).
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// ProfileV1 is the value version 1 caches at user#2:{id}:profile.
type ProfileV1 struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned with the row's version column.
func (p ProfileV1) CacheVersion() int64 { return p.Version }

// Contact is part of ProfileV2.
type Contact struct {
	Email string `json:"email"`
}

// ProfileV2 is the value version 2 caches at v2:user#2:{id}:profile: the
// same row in a new shape.
type ProfileV2 struct {
	ID          int64   `json:"id"`
	DisplayName string  `json:"display_name"`
	Contact     Contact `json:"contact"`
	Version     int64   `json:"version"`
}

// CacheVersion implements cache.Versioned with the row's version column.
func (p ProfileV2) CacheVersion() int64 { return p.Version }

// ToV2 is version 2's view of a row.
func ToV2(p ProfileV1) ProfileV2 {
	return ProfileV2{ID: p.ID, DisplayName: p.Name, Contact: Contact{Email: p.Email}, Version: p.Version}
}

// MigrateProfile is Options.Migrate for version 2: it converts a cached
// version 1 value (JSON, the default codec) into version 2's encoding. An
// error sends the Get to the database instead, so anything doubtful is
// refused rather than guessed.
func MigrateProfile(old []byte) ([]byte, error) {
	var p ProfileV1
	if err := json.Unmarshal(old, &p); err != nil {
		return nil, fmt.Errorf("profile v1: %w", err)
	}
	if p.ID <= 0 || p.Version <= 0 {
		return nil, errors.New("profile v1: missing id or version")
	}
	return json.Marshal(ToV2(p))
}

// Repo reads profiles from MySQL and counts its reads.
type Repo struct {
	db    *sql.DB
	table string
	reads atomic.Int64
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewRepo returns a repository of the profiles in table.
func NewRepo(db *sql.DB, table string) (*Repo, error) {
	// The table name is spliced into the SQL, so only plain names are allowed.
	if !tableName.MatchString(table) {
		return nil, fmt.Errorf("invalid table name %q", table)
	}
	return &Repo{db: db, table: table}, nil
}

// Setup creates the table and inserts users profiles, ids 1..users.
func (r *Repo) Setup(ctx context.Context, users int) error {
	if _, err := r.db.ExecContext(ctx, `CREATE TABLE `+r.table+` (
		id      BIGINT       NOT NULL PRIMARY KEY,
		name    VARCHAR(255) NOT NULL,
		email   VARCHAR(255) NOT NULL,
		version BIGINT       NOT NULL DEFAULT 1
	)`); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	const batch = 500
	for first := 1; first <= users; first += batch {
		last := min(first+batch-1, users)
		var (
			q    strings.Builder
			args []any
		)
		q.WriteString(`INSERT INTO ` + r.table + ` (id, name, email) VALUES `)
		for id := first; id <= last; id++ {
			if id > first {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?)")
			args = append(args, id, fmt.Sprintf("User %d", id), fmt.Sprintf("user%d@example.com", id))
		}
		if _, err := r.db.ExecContext(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}

// ByID returns the profile with id. A missing row is sql.ErrNoRows, which
// the cache turns into cache.ErrNotFound.
func (r *Repo) ByID(ctx context.Context, id int64) (ProfileV1, error) {
	r.reads.Add(1)
	var p ProfileV1
	err := r.db.QueryRowContext(ctx,
		`SELECT id, name, email, version FROM `+r.table+` WHERE id = ?`, id).
		Scan(&p.ID, &p.Name, &p.Email, &p.Version)
	return p, err
}

// Reads returns how many times ByID queried the database.
func (r *Repo) Reads() int64 { return r.reads.Load() }

// ProfileKey is the Loader key of a profile: with the Loader name "user" the
// Redis key is Prefix + "user#2:" + id + ":profile".
func ProfileKey(id int) string { return strconv.Itoa(id) + ":profile" }

func parseProfileKey(key string) (int64, error) {
	id, ok := strings.CutSuffix(key, ":profile")
	if !ok {
		return 0, fmt.Errorf("not a profile key: %q", key)
	}
	return strconv.ParseInt(id, 10, 64)
}

// Config describes one run.
type Config struct {
	// Prefix is put before every Redis key of the run: version 1 uses
	// Prefix + "user#2:{id}:profile", version 2 Prefix + "v2:user#2:{id}:profile".
	Prefix   string
	Users    int           // profiles in the table
	Requests int           // Gets per loader in each phase of Zipf traffic
	Workers  int           // concurrent Gets per loader
	Seed     uint64        // seeds the traffic, so runs can be repeated
	TTL      time.Duration // of the cached profiles
	// RedisTimeout is Options.RedisTimeout. A Get whose Redis calls time
	// out answers from the database, which this program counts as a
	// database read; 0 keeps the library's default.
	RedisTimeout time.Duration
}

func (c *Config) defaults() {
	c.Users = or(c.Users, 2000)
	c.Requests = or(c.Requests, 4000)
	c.Workers = or(c.Workers, 16)
	c.Seed = or(c.Seed, 1)
	c.TTL = or(c.TTL, 10*time.Minute)
}

func or[V comparable](v, def V) V {
	var zero V
	if v == zero {
		return def
	}
	return v
}

// The Loaders of the two versions.

func options(cfg *Config, prefix string) *cache.Options {
	return &cache.Options{Prefix: prefix, TTL: cfg.TTL, RedisTimeout: cfg.RedisTimeout}
}

// NewV1 is version 1's Loader: name "user", keys {id}:profile.
func NewV1(rdb redis.UniversalClient, repo *Repo, opts *cache.Options) (*cache.Loader[ProfileV1], error) {
	return cache.New(rdb, "user", func(ctx context.Context, key string) (ProfileV1, error) {
		id, err := parseProfileKey(key)
		if err != nil {
			return ProfileV1{}, err
		}
		return repo.ByID(ctx, id)
	}, opts)
}

// NewV2 is version 2's Loader: the same name and keys under a new prefix,
// and a new value shape. With opts.PreviousKeyPrefix set to version 1's
// Prefix + "user#2:" and opts.Migrate to MigrateProfile, its misses are
// answered from version 1's entries.
func NewV2(rdb redis.UniversalClient, repo *Repo, opts *cache.Options) (*cache.Loader[ProfileV2], error) {
	return cache.New(rdb, "user", func(ctx context.Context, key string) (ProfileV2, error) {
		id, err := parseProfileKey(key)
		if err != nil {
			return ProfileV2{}, err
		}
		p, err := repo.ByID(ctx, id)
		return ToV2(p), err
	}, opts)
}

// Traffic.

// zipfIDs returns n profile ids (1..users) drawn Zipf-like: a few users are
// hot, most are rarely read. The hot ones are spread over the id range.
func zipfIDs(rng *mrand.Rand, users, n int) []int {
	perm := rng.Perm(users)
	z := mrand.NewZipf(rng, 1.1, 1, uint64(users-1))
	ids := make([]int, n)
	for i := range ids {
		ids[i] = perm[z.Uint64()] + 1
	}
	return ids
}

// passIDs returns every profile id once, shuffled: a full pass.
func passIDs(rng *mrand.Rand, users int) []int {
	ids := rng.Perm(users)
	for i := range ids {
		ids[i]++
	}
	return ids
}

// Phase is what one loader did in one phase.
type Phase struct {
	Name     string
	Gets     int64 // Gets (or keys warmed)
	DBReads  int64 // of them, how many reached the database (LoadFunc calls)
	Hits     int64 // answered from the loader's own entries (Stats().Hits)
	Migrated int64 // answered from the previous key format (Stats().Migrated)
}

// HitRate is the share of Gets that did not reach the database.
func (p Phase) HitRate() float64 {
	if p.Gets == 0 {
		return 0
	}
	return float64(p.Gets-p.DBReads) / float64(p.Gets)
}

// measure runs f and returns what l's counters say it did.
func measure[T any](name string, l *cache.Loader[T], f func() (int, error)) (Phase, error) {
	before := l.Stats()
	n, err := f()
	after := l.Stats()
	return Phase{
		Name:     name,
		Gets:     int64(n),
		DBReads:  int64(after.Loads - before.Loads),
		Hits:     int64(after.Hits - before.Hits),
		Migrated: int64(after.Migrated - before.Migrated),
	}, err
}

// serve Gets the profiles of ids through l, workers at a time, and returns
// how many Gets it made. Every id exists, so any error is a failure.
func serve[T any](ctx context.Context, l *cache.Loader[T], ids []int, workers int) (int, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		once     sync.Once
	)
	for range min(workers, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(ids) {
					return
				}
				if _, err := l.Get(ctx, ProfileKey(ids[i])); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("get %s: %w", ProfileKey(ids[i]), err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return len(ids), firstErr
}

// Report is what a run measured.
type Report struct {
	Warmup    Phase // version 1 filling its cache (the state before the rollout)
	Before    Phase // version 1 alone, warm, Zipf traffic
	Naive     Phase // version 2 without PreviousKeyPrefix: its first pass over every user
	DuringV1  Phase // version 1 during the rollout, Zipf traffic
	DuringV2  Phase // version 2 with the fallback, at the same time, Zipf traffic
	Touched   int   // distinct users DuringV2 read
	Warm      Phase // version 2 warming the users not touched yet
	WarmStats cache.WarmResult
	AfterPass Phase // version 2 alone: a pass over every user
	After     Phase // version 2 alone, Zipf traffic
	DBReads   int64 // the repository's own count of database reads, all phases
}

// Phases lists the measured phases in order.
func (r *Report) Phases() []Phase {
	return []Phase{r.Warmup, r.Before, r.Naive, r.DuringV1, r.DuringV2, r.Warm, r.AfterPass, r.After}
}

// run creates the profiles table in db (the caller drops it) and plays the
// rollout on rdb under cfg.Prefix (the caller deletes the keys), printing
// each phase to w.
func run(ctx context.Context, w io.Writer, db *sql.DB, rdb redis.UniversalClient, table string, cfg Config) (*Report, error) {
	cfg.defaults()
	repo, err := NewRepo(db, table)
	if err != nil {
		return nil, err
	}
	if err := repo.Setup(ctx, cfg.Users); err != nil {
		return nil, err
	}
	rng := mrand.New(mrand.NewPCG(cfg.Seed, 0x6b65796d6967))
	all := make([]string, cfg.Users)
	for i := range all {
		all[i] = ProfileKey(i + 1)
	}
	rep := &Report{}
	fmt.Fprintf(w, "%d profiles in table %s; Redis keys under %q\n", cfg.Users, table, cfg.Prefix)
	fmt.Fprintf(w, "v1: %s  ->  v2: %s\n\n", cfg.Prefix+"user#2:{id}:profile", cfg.Prefix+"v2:user#2:{id}:profile")
	fmt.Fprintf(w, "%-46s %7s %9s %9s %9s\n", "phase", "gets", "db reads", "hit rate", "migrated")
	show := func(p Phase) {
		fmt.Fprintf(w, "%-46s %7d %9d %8.2f%% %9d\n", p.Name, p.Gets, p.DBReads, 100*p.HitRate(), p.Migrated)
	}

	// Version 1 has been running for a while: its cache is warm.
	v1, err := NewV1(rdb, repo, options(&cfg, cfg.Prefix))
	if err != nil {
		return nil, err
	}
	defer v1.Close()
	if rep.Warmup, err = measure("v1 warming up (every user once)", v1, func() (int, error) {
		res, err := v1.Warm(ctx, all, &cache.WarmOptions{Concurrency: cfg.Workers})
		return res.Done, err
	}); err != nil {
		return nil, err
	}
	show(rep.Warmup)
	if rep.Before, err = measure("before: v1 only, Zipf traffic", v1, func() (int, error) {
		return serve(ctx, v1, zipfIDs(rng, cfg.Users, cfg.Requests), cfg.Workers)
	}); err != nil {
		return nil, err
	}
	show(rep.Before)

	// The naive rollout, for comparison: version 2 in a namespace of its
	// own (so that it leaves the real rollout's alone) and no fallback.
	// Its first pass over the users is the first minutes after a deploy:
	// every Get reaches the database.
	naiveOpts := options(&cfg, cfg.Prefix+"naive:v2:")
	naive, err := NewV2(rdb, repo, naiveOpts)
	if err != nil {
		return nil, err
	}
	rep.Naive, err = measure("naive rollout: v2, no fallback, first pass", naive, func() (int, error) {
		return serve(ctx, naive, passIDs(rng, cfg.Users), cfg.Workers)
	})
	naive.Close()
	if err != nil {
		return nil, err
	}
	show(rep.Naive)

	// The rollout with the fallback: version 2 names version 1's keys and
	// converts their values. Old and new pods serve traffic at the same
	// time; version 2's misses are answered from version 1's entries.
	v2opts := options(&cfg, cfg.Prefix+"v2:")
	v2opts.PreviousKeyPrefix = cfg.Prefix + "user#2:"
	v2opts.Migrate = MigrateProfile
	v2, err := NewV2(rdb, repo, v2opts)
	if err != nil {
		return nil, err
	}
	defer v2.Close()
	oldIDs := zipfIDs(rng, cfg.Users, cfg.Requests)
	newIDs := zipfIDs(rng, cfg.Users, cfg.Requests)
	var (
		wg    sync.WaitGroup
		e1    error
		start = time.Now()
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rep.DuringV1, e1 = measure("during: v1 pods", v1, func() (int, error) {
			return serve(ctx, v1, oldIDs, cfg.Workers)
		})
	}()
	rep.DuringV2, err = measure("during: v2 pods (PreviousKeyPrefix + Migrate)", v2, func() (int, error) {
		return serve(ctx, v2, newIDs, cfg.Workers)
	})
	wg.Wait()
	if err = errors.Join(err, e1); err != nil {
		return nil, err
	}
	show(rep.DuringV1)
	show(rep.DuringV2)
	show(Phase{
		Name:     "during: v1 and v2 pods together",
		Gets:     rep.DuringV1.Gets + rep.DuringV2.Gets,
		DBReads:  rep.DuringV1.DBReads + rep.DuringV2.DBReads,
		Migrated: rep.DuringV2.Migrated,
	})
	touched := make(map[int]bool)
	for _, id := range newIDs {
		touched[id] = true
	}
	rep.Touched = len(touched)
	fmt.Fprintf(w, "  (%v, both at once; v2 touched %d of %d users)\n",
		time.Since(start).Round(time.Millisecond), rep.Touched, cfg.Users)

	// Before version 1 is retired, fill the new format for the users the
	// traffic has not touched yet. Warm goes through the read path, so
	// these too are converted from version 1's entries, not loaded.
	var untouched []string
	for id := 1; id <= cfg.Users; id++ {
		if !touched[id] {
			untouched = append(untouched, ProfileKey(id))
		}
	}
	if rep.Warm, err = measure("warm: v2, users not touched yet", v2, func() (int, error) {
		rep.WarmStats, err = v2.Warm(ctx, untouched, &cache.WarmOptions{Concurrency: cfg.Workers})
		if err == nil && rep.WarmStats.Errors+rep.WarmStats.NotFound > 0 {
			err = fmt.Errorf("warm: %+v", rep.WarmStats)
		}
		return rep.WarmStats.Done, err
	}); err != nil {
		return nil, err
	}
	show(rep.Warm)

	// Version 1 is retired: version 2 alone serves every user from its own
	// entries.
	v1.Close()
	if rep.AfterPass, err = measure("after: v2 only, a pass over every user", v2, func() (int, error) {
		return serve(ctx, v2, passIDs(rng, cfg.Users), cfg.Workers)
	}); err != nil {
		return nil, err
	}
	show(rep.AfterPass)
	if rep.After, err = measure("after: v2 only, Zipf traffic", v2, func() (int, error) {
		return serve(ctx, v2, zipfIDs(rng, cfg.Users, cfg.Requests), cfg.Workers)
	}); err != nil {
		return nil, err
	}
	show(rep.After)
	rep.DBReads = repo.Reads()

	s := v2.Stats()
	fmt.Fprintf(w, "\nv2 Stats: migrated=%d hits=%d misses=%d loads=%d lease_waits=%d redis_errors=%d breaker_opened=%d\n",
		s.Migrated, s.Hits, s.Misses, s.Loads, s.LeaseWaits, s.RedisErrors, s.BreakerOpened)
	fmt.Fprintln(w, "(a migrated Get counts as a miss in Stats and cache_requests_total: it missed the new format;")
	fmt.Fprintln(w, " the hit rate above is the database's view: Gets that did not reach it)")
	fmt.Fprintf(w, "naive rollout: %.2f%% -> %.2f%%; with the fallback: %.2f%% -> %.2f%% -> %.2f%%\n",
		100*rep.Before.HitRate(), 100*rep.Naive.HitRate(),
		100*rep.Before.HitRate(), 100*rep.DuringV2.HitRate(), 100*rep.AfterPass.HitRate())
	return rep, nil
}

// deleteKeys deletes every Redis key under prefix with SCAN + DEL (never
// FLUSHALL: the Redis may be shared) and returns how many it deleted.
func deleteKeys(ctx context.Context, rdb redis.UniversalClient, prefix string) (int64, error) {
	var n int64
	iter := rdb.Scan(ctx, 0, prefix+"*", 500).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		d, err := rdb.Del(ctx, batch...).Result()
		n += d
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return n, err
	}
	return n, flush()
}

func randomHex() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func main() {
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN (go-sql-driver/mysql format)")
	users := flag.Int("users", 2000, "profiles to create")
	requests := flag.Int("requests", 4000, "Gets per loader in each phase of Zipf traffic")
	workers := flag.Int("workers", 16, "concurrent Gets per loader")
	seed := flag.Uint64("seed", 1, "traffic seed")
	flag.Parse()
	if *users < 1 || *requests < 1 || *workers < 1 {
		log.Fatal("-users, -requests and -workers must be at least 1")
	}

	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// ContextTimeoutEnabled lets the cache's RedisTimeout bound every call;
	// without it a hung Redis holds a Get for seconds (and New refuses it).
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()

	id := randomHex()
	table := "profiles_keymigration_" + id
	prefix := "keymigration:" + id + ":"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	_, err = run(ctx, os.Stdout, db, rdb, table, Config{
		Prefix: prefix, Users: *users, Requests: *requests, Workers: *workers, Seed: *seed,
	})

	// Clean up whatever happened, with a context of its own.
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if _, derr := db.ExecContext(cctx, "DROP TABLE IF EXISTS "+table); derr != nil {
		log.Printf("drop table %s: %v", table, derr)
	}
	if n, derr := deleteKeys(cctx, rdb, prefix); derr != nil {
		log.Printf("delete keys %s*: %v", prefix, derr)
	} else {
		fmt.Printf("cleaned up: table %s dropped, %d Redis keys deleted\n", table, n)
	}
	if err != nil {
		log.Fatal(err)
	}
}
