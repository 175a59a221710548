package writebehind_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// benchKeys is how many counter keys the benchmarks spread increments over.
const benchKeys = 1000

// benchParallelism is goroutines per GOMAXPROCS in the parallel benchmarks:
// 64 on 2 cores is 128 concurrent requests, a modest web server's load.
const benchParallelism = 64

// BenchmarkAdd: one increment through the counter (Redis with
// appendonly everysec, as in production), 16 goroutines per core sharing
// a client pool — the write path the direct UPDATE below is compared with.
func BenchmarkAdd(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisConfig{AppendOnly: true})
	for _, shards := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			c := newCounter(b, srv.Client(b), &writebehind.Options{Shards: shards})
			ctx := context.Background()
			b.SetParallelism(benchParallelism)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.Add(ctx, keyName(rand.N(benchKeys)), 1); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "increments/s")
		})
	}
}

// BenchmarkDirectUpdate: one increment as an autocommitted
// UPDATE … SET n = n + 1 on MariaDB, at the same concurrency.
func BenchmarkDirectUpdate(b *testing.B) {
	db := testenv.MySQL(b)
	table := testenv.Table(b, db, "wb_direct")
	if _, err := db.Exec("CREATE TABLE " + table + " (k VARCHAR(64) NOT NULL PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		b.Fatal(err)
	}
	for i := range benchKeys {
		if _, err := db.Exec("INSERT INTO "+table+" (k, n) VALUES (?, 0)", keyName(i)); err != nil {
			b.Fatal(err)
		}
	}
	stmt, err := db.Prepare("UPDATE " + table + " SET n = n + 1 WHERE k = ?")
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := stmt.Exec(keyName(rand.N(benchKeys))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "increments/s")
}

// BenchmarkFlush: applying logged increments to MySQL, per increment
// (FlushOnce passes, batches of up to 10,000 log entries per shard).
func BenchmarkFlush(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisConfig{AppendOnly: true})
	db := testenv.MySQL(b)
	tb := newTables(b, db)
	c := newCounter(b, srv.Client(b), nil)
	f, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Counted by 128 goroutines: log entries hold what concurrent Adds
	// share, as in production.
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if err := c.Add(ctx, keyName(rand.N(benchKeys)), 1); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n, err := f.FlushOnce(ctx)
		if err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.StopTimer()
	s := f.Stats()
	b.ReportMetric(float64(s.Rows)/float64(b.N), "rows/increment")
	b.ReportMetric(float64(s.Batches)/float64(b.N), "tx/increment")
}

// TestThroughputVersusUpdate (with -writebehind.long) compares increments/s
// through Add with direct UPDATE … SET n = n + 1, at the same concurrency,
// in alternating 3-second rounds so that both see the same machine load.
func TestThroughputVersusUpdate(t *testing.T) {
	if !*long {
		t.Skip("a measurement: run with -writebehind.long")
	}
	const goroutines, round, rounds = 128, 3 * time.Second, 3
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true})
	db := testenv.MySQL(t)
	db.SetMaxOpenConns(goroutines)
	db.SetMaxIdleConns(goroutines)
	table := testenv.Table(t, db, "wb_direct")
	if _, err := db.Exec("CREATE TABLE " + table + " (k VARCHAR(64) NOT NULL PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	for i := range benchKeys {
		if _, err := db.Exec("INSERT INTO "+table+" (k, n) VALUES (?, 0)", keyName(i)); err != nil {
			t.Fatal(err)
		}
	}
	// measure runs op from goroutines for d and returns the rate.
	measure := func(d time.Duration, op func(ctx context.Context, key string) error) float64 {
		var n atomic.Int64
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				for time.Now().Before(stop) {
					if err := op(ctx, keyName(rand.N(benchKeys))); err != nil {
						t.Error(err)
						return
					}
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		return float64(n.Load()) / d.Seconds()
	}
	update := func(ctx context.Context, key string) error {
		_, err := db.ExecContext(ctx, "UPDATE "+table+" SET n = n + 1 WHERE k = ?", key)
		return err
	}
	for _, shards := range []int{1, 4, 16} {
		c := newCounter(t, srv.Client(t), &writebehind.Options{Shards: shards})
		add := func(ctx context.Context, key string) error { return c.Add(ctx, key, 1) }
		var adds, updates []float64
		var redisSec, clientSec float64
		for range rounds {
			r0, c0 := redisCPU(t, srv), selfCPU()
			adds = append(adds, measure(round, add))
			redisSec, clientSec = redisSec+redisCPU(t, srv)-r0, clientSec+selfCPU()-c0
			updates = append(updates, measure(round, update))
		}
		a, u := median(adds), median(updates)
		var n float64
		for _, x := range adds {
			n += x * round.Seconds()
		}
		t.Logf("shards=%d, %d goroutines, median of %d rounds of %v: Add %.0f/s, UPDATE %.0f/s: %.1f×  (Add %v, UPDATE %v); "+
			"CPU per Add: Redis %.1f µs, client %.1f µs",
			shards, goroutines, rounds, round, a, u, a/u, rounded(adds), rounded(updates), redisSec/n*1e6, clientSec/n*1e6)
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x)
	}
	return out
}

// redisCPU is the CPU time (user + system) the server has used, from INFO.
func redisCPU(t testing.TB, srv *testenv.LocalRedis) float64 {
	info, err := srv.Client(t).Info(context.Background(), "cpu").Result()
	if err != nil {
		t.Fatal(err)
	}
	var s float64
	for _, l := range strings.Split(info, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(l, p); ok {
				f, _ := strconv.ParseFloat(v, 64)
				s += f
			}
		}
	}
	return s
}

// selfCPU is the CPU time this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
