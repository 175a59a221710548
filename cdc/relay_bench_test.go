package cdc_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// BenchmarkRelayThroughput measures how fast a relay works through a
// backlog of row events: 200k rows × b.N are updated (1,000 rows per
// transaction) while no relay runs, then a relay resumes from its
// checkpoint and the time until it applied all of them is measured.
// Run it with -benchtime=1x (each run starts its own mariadbd):
//
//	go test -run '^$' -bench RelayThroughput -benchtime=1x
func BenchmarkRelayThroughput(b *testing.B) {
	b.Run("target=noop", func(b *testing.B) {
		var n atomic.Int64
		benchThroughput(b, func(*source, string) cdc.Target {
			return targetFunc(func(ctx context.Context, kvs ...cache.KeyVersion) error {
				n.Add(int64(len(kvs)))
				return nil
			})
		})
	})
	b.Run("target=loader", func(b *testing.B) {
		// A Redis of its own: the shared one's other clients would be
		// measured too.
		var rdb *redis.Client
		benchThroughput(b, func(s *source, table string) cdc.Target {
			rdb = testenv.StartRedis(b, testenv.RedisConfig{}).Client(b)
			return userLoader(b, rdb, s.db, table, "cdcbench:", nil)
		})
		info := rdb.Info(context.Background(), "commandstats").Val()
		for line := range strings.Lines(info) {
			if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
				for f := range strings.SplitSeq(strings.TrimSpace(rest), ",") {
					if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
						us, _ := strconv.ParseFloat(v, 64)
						b.ReportMetric(us, "redis-µs/script")
					}
				}
			}
		}
	})
}

func benchThroughput(b *testing.B, target func(*source, string) cdc.Target) {
	const rowsPerRound = 200_000
	s := startSource(b)
	table := s.usersTable(b, rowsPerRound)
	rules := []cdc.Rule{{Table: table, Target: target(s, table), KeyColumn: "id", VersionColumn: "version"}}
	opts := &cdc.Options{Name: "bench-" + testenv.Random(4), Logger: quiet()}

	// A first run leaves a checkpoint at the current position.
	ctx, cancel := context.WithCancel(context.Background())
	r, err := cdc.New(s.dsn(), rules, opts)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(b, 30*time.Second, "leader", func() bool { return r.Stats().Leader })
	cancel()
	<-done
	r.Close()

	for round := range b.N {
		for lo := 1; lo <= rowsPerRound; lo += 1000 {
			mustExec(b, s.db, fmt.Sprintf("UPDATE %s SET version = %d WHERE id BETWEEN %d AND %d", table, round+2, lo, lo+999))
		}
	}
	b.ResetTimer()
	began := time.Now()
	r2 := startRelay(b, s.dsn(), rules, opts)
	caughtUp(b, s, r2)
	elapsed := time.Since(began)
	b.StopTimer()
	st := r2.Stats()
	b.ReportMetric(float64(st.Rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(st.Invalidations)/elapsed.Seconds(), "invalidations/s")
	b.ReportMetric(float64(st.Events)/elapsed.Seconds(), "events/s")
	if st.Batches > 0 {
		b.ReportMetric(float64(st.Invalidations)/float64(st.Batches), "keys/call")
	}
}
