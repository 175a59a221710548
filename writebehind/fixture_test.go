package writebehind_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// quiet drops the clients' own log lines (dial retries while a server is
// down on purpose).
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quiet{}) }

// tables are a test's MySQL tables: the counters (k, n) and the applied
// record.
type tables struct {
	counts, applied string
}

// newTables creates a counts table and an applied table of the test's own.
func newTables(t testing.TB, db *sql.DB) tables {
	t.Helper()
	tb := tables{counts: testenv.Table(t, db, "wb_counts"), applied: testenv.Table(t, db, "wb_applied")}
	if _, err := db.Exec("CREATE TABLE " + tb.counts + " (k VARCHAR(64) NOT NULL PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := writebehind.Migrate(context.Background(), db, tb.applied); err != nil {
		t.Fatal(err)
	}
	return tb
}

// applyTo returns the ApplyFunc of the examples: one multi-row upsert
// per 1,000 keys of the batch.
func applyTo(table string) writebehind.ApplyFunc {
	return func(ctx context.Context, tx *sql.Tx, batch []writebehind.Delta) error {
		for len(batch) > 0 {
			chunk := batch[:min(len(batch), 1000)]
			batch = batch[len(chunk):]
			var b strings.Builder
			b.WriteString("INSERT INTO " + table + " (k, n) VALUES ")
			args := make([]any, 0, 2*len(chunk))
			for i, d := range chunk {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?,?)")
				args = append(args, d.Key, d.Delta)
			}
			b.WriteString(" ON DUPLICATE KEY UPDATE n = n + VALUES(n)")
			if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
				return err
			}
		}
		return nil
	}
}

// dbTotals reads the counts table.
func dbTotals(t testing.TB, db *sql.DB, table string) map[string]int64 {
	t.Helper()
	rows, err := db.Query("SELECT k, n FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		m[k] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

func sum(m map[string]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// tally counts the increments a test's writers had acknowledged, per key.
type tally struct {
	mu    sync.Mutex // protects n and times
	n     map[string]int64
	times []time.Time // when each increment was acknowledged
}

func newTally() *tally { return &tally{n: map[string]int64{}} }

func (t *tally) add(key string, d int64) {
	now := time.Now()
	t.mu.Lock()
	t.n[key] += d
	t.times = append(t.times, now)
	t.mu.Unlock()
}

// ackedBefore counts the increments acknowledged in the d before any of
// the moments at.
func (t *tally) ackedBefore(at []time.Time, d time.Duration) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, x := range t.times {
		for _, a := range at {
			if !x.After(a) && a.Sub(x) <= d {
				n++
				break
			}
		}
	}
	return n
}

func (t *tally) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int64, len(t.n))
	for k, v := range t.n {
		m[k] = v
	}
	return m
}

// requireEqualTotals fails unless the database holds exactly want.
func requireEqualTotals(t testing.TB, db *sql.DB, table string, want map[string]int64) {
	t.Helper()
	got := dbTotals(t, db, table)
	bad := 0
	var lines []string
	for k, w := range want {
		if got[k] != w {
			bad++
			if len(lines) < 10 {
				lines = append(lines, fmt.Sprintf("%s: db %d, counted %d", k, got[k], w))
			}
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && g != 0 {
			bad++
			lines = append(lines, fmt.Sprintf("%s: db %d, never counted", k, g))
		}
	}
	if bad > 0 {
		t.Fatalf("%d keys differ (db total %d, counted %d):\n%s", bad, sum(got), sum(want), strings.Join(lines, "\n"))
	}
}

// keyName is the i-th of a test's counter keys.
func keyName(i int) string { return fmt.Sprintf("post:%d", i) }

// newCounter returns a Counter on rdb under a prefix of the test's own.
func newCounter(t testing.TB, rdb redis.UniversalClient, opts *writebehind.Options) *writebehind.Counter {
	t.Helper()
	var o writebehind.Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = testenv.Prefix(t, rdb, "wbtest:")
	}
	c, err := writebehind.New(rdb, "likes", &o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drain flushes until nothing is pending (every shard's log applied and
// acknowledged) or the deadline passes.
func drain(t testing.TB, f *writebehind.Flusher, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	for {
		n, err := f.FlushOnce(ctx)
		if err == nil && n == 0 && f.Stats().Pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained within %v: pending %d, last error %v", within, f.Stats().Pending, err)
		}
		if n == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}
