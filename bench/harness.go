package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

// Row is one row of the benchmark table rows(id, val, version).
type Row struct {
	ID      int64  `json:"id"`
	Val     string `json:"val"`
	Version int64  `json:"version"`
}

// CacheVersion makes Row versioned for this library.
func (r Row) CacheVersion() int64 { return r.Version }

// LoadFn reads one row; the scenario wraps it to count calls and add delay.
type LoadFn func(ctx context.Context, id string) (Row, error)

// Impl is one cache implementation under test.
type Impl interface {
	Get(ctx context.Context, id string) (Row, error)
	// Write commits an UPDATE and then runs the implementation's
	// invalidate/write path; it returns the committed version.
	Write(ctx context.Context, id, val string) (int64, error)
	Close() error
}

// Config is what a factory needs to build one instance.
type Config struct {
	Env       *Env
	Namespace string        // unique per scenario and implementation; all keys live under it
	RedisAddr string        // the address to dial (a proxy in the outage scenario)
	TTL       time.Duration // the cache TTL the scenario wants
	Load      LoadFn
}

// Factory builds one instance (one "process": its own Redis client).
type Factory struct {
	Name string
	New  func(c Config) (Impl, error)
	// MinTTL is the shortest TTL the implementation can hold (0: any).
	MinTTL time.Duration
	Note   string
}

// Env holds the shared servers and the benchmark table.
type Env struct {
	RedisAddr string
	DB        *sql.DB
	Table     string
	Prefix    string // run prefix of every Redis key
	Rows      int
	admin     *redis.Client
	seq       atomic.Int64
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewEnv connects to both servers and creates a fresh table of n rows.
func NewEnv(ctx context.Context, redisAddr, dsn string, n int) (*Env, error) {
	admin := redis.NewClient(&redis.Options{Addr: redisAddr})
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := admin.Ping(pctx).Err(); err != nil {
		admin.Close()
		return nil, fmt.Errorf("redis at %s unreachable: %w", redisAddr, err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		admin.Close()
		return nil, err
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	if err := db.PingContext(pctx); err != nil {
		admin.Close()
		db.Close()
		return nil, fmt.Errorf("database %s unreachable: %w", dsn, err)
	}
	id := randHex(4)
	e := &Env{RedisAddr: redisAddr, DB: db, Table: "bench_rows_" + id, Prefix: "cbench:" + id + ":", Rows: n, admin: admin}
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+e.Table+
		" (id BIGINT PRIMARY KEY, val VARCHAR(64) NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		e.Close()
		return nil, err
	}
	for start := 1; start <= n; start += 1000 {
		var sb strings.Builder
		args := []any{}
		sb.WriteString("INSERT INTO " + e.Table + " (id, val, version) VALUES ")
		for i := start; i < start+1000 && i <= n; i++ {
			if i > start {
				sb.WriteByte(',')
			}
			sb.WriteString("(?, ?, 1)")
			args = append(args, i, "v"+strconv.Itoa(i))
		}
		if _, err := db.ExecContext(ctx, sb.String(), args...); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// Namespace returns a fresh key namespace under the run prefix.
func (e *Env) Namespace(scenario, impl string) string {
	return fmt.Sprintf("%s%s:%d:", e.Prefix, scenario, e.seq.Add(1))
}

// Select reads one row from the database.
func (e *Env) Select(ctx context.Context, id string) (Row, error) {
	var r Row
	err := e.DB.QueryRowContext(ctx, "SELECT id, val, version FROM "+e.Table+" WHERE id = ?", id).Scan(&r.ID, &r.Val, &r.Version)
	return r, err
}

// Update bumps a row's version and returns the new version.
func (e *Env) Update(ctx context.Context, id, val string) (int64, error) {
	res, err := e.DB.ExecContext(ctx, "UPDATE "+e.Table+" SET val = ?, version = LAST_INSERT_ID(version + 1) WHERE id = ?", val, id)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// Versions returns every row's current version.
func (e *Env) Versions(ctx context.Context) (map[string]int64, error) {
	rows, err := e.DB.QueryContext(ctx, "SELECT id, version FROM "+e.Table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[string]int64{}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			return nil, err
		}
		m[strconv.FormatInt(id, 10)] = v
	}
	return m, rows.Err()
}

// CleanRedis deletes every key under prefix.
func (e *Env) CleanRedis(ctx context.Context, prefix string) {
	iter := e.admin.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			e.admin.Unlink(ctx, batch...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		e.admin.Unlink(ctx, batch...)
	}
}

// Close drops the table and the run's keys.
func (e *Env) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e.CleanRedis(ctx, e.Prefix)
	_, _ = e.DB.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.Table)
	e.DB.Close()
	e.admin.Close()
}

// Counter counts loads and optionally records their start times.
type Counter struct {
	n     atomic.Int64
	mu    sync.Mutex
	times []time.Time
	keep  bool
}

// Wrap returns a LoadFn that counts each call, selects the row and sleeps delay
// (or delayFn()) after the SELECT: a slow reader.
func (c *Counter) Wrap(e *Env, delay func() time.Duration) LoadFn {
	return func(ctx context.Context, id string) (Row, error) {
		c.n.Add(1)
		if c.keep {
			c.mu.Lock()
			c.times = append(c.times, time.Now())
			c.mu.Unlock()
		}
		r, err := e.Select(ctx, id)
		if delay != nil {
			if d := delay(); d > 0 {
				time.Sleep(d)
			}
		}
		return r, err
	}
}

func (c *Counter) Load() int64 { return c.n.Load() }

// writeThen is the shared Write: UPDATE, then the implementation's invalidation.
func writeThen(ctx context.Context, e *Env, id, val string, inval func(ctx context.Context) error) (int64, error) {
	v, err := e.Update(ctx, id, val)
	if err != nil {
		return 0, err
	}
	return v, inval(ctx)
}

// newClient is a plain go-redis client, as the peers' READMEs build it.
func newClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr})
}
