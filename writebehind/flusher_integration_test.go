package writebehind_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// An ApplyFunc that fails or panics rolls its batch back: nothing is
// recorded, nothing acknowledged, and the next pass applies it exactly.
func TestApplyFailureRollsBack(t *testing.T) {
	rdb, db := testenv.Redis(t, ""), testenv.MySQL(t)
	tb := newTables(t, db)
	c := newCounter(t, rdb, &writebehind.Options{Shards: 2})
	ctx := context.Background()
	for i := range 20 {
		if err := c.Add(ctx, keyName(i%5), 1); err != nil {
			t.Fatal(err)
		}
	}
	apply := applyTo(tb.counts)
	var mode string
	var flushed []writebehind.Delta
	f, err := c.NewFlusher(db, func(ctx context.Context, tx *sql.Tx, batch []writebehind.Delta) error {
		if err := apply(ctx, tx, batch); err != nil { // written, then undone by the rollback
			return err
		}
		switch mode {
		case "panic":
			panic("boom")
		case "error":
			return errors.New("refused")
		}
		return nil
	}, &writebehind.FlusherOptions{Table: tb.applied,
		OnFlushed: func(_ context.Context, b []writebehind.Delta) error { flushed = append(flushed, b...); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	mode = "panic"
	_, err = f.FlushOnce(ctx)
	var pe *writebehind.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("FlushOnce with a panicking Apply: %v", err)
	}
	mode = "error"
	if _, err := f.FlushOnce(ctx); err == nil {
		t.Fatal("FlushOnce with a failing Apply: nil error")
	}
	if got := sum(dbTotals(t, db, tb.counts)); got != 0 {
		t.Fatalf("rolled-back batches left %d in the table", got)
	}
	if p, _ := c.Pending(ctx, keyName(0)); p != 4 {
		t.Fatalf("Pending = %d, want 4: failed batches stay pending", p)
	}
	mode = ""
	n, err := f.FlushOnce(ctx)
	if err != nil || n != 20 {
		t.Fatalf("FlushOnce = %d, %v; want 20 entries", n, err)
	}
	requireEqualTotals(t, db, tb.counts, map[string]int64{keyName(0): 4, keyName(1): 4, keyName(2): 4, keyName(3): 4, keyName(4): 4})
	if p, _ := c.Pending(ctx, keyName(0)); p != 0 {
		t.Fatalf("Pending = %d after the flush", p)
	}
	var inFlushed int64
	for _, d := range flushed {
		inFlushed += d.Delta
	}
	if inFlushed != 20 {
		t.Fatalf("OnFlushed saw %d, want 20", inFlushed)
	}
	if s := f.Stats(); s.Errors < 2 || s.Applied != 20 || s.Pending != 0 { // an error per failed shard batch
		t.Fatalf("stats %+v", s)
	}
}

// The Prometheus metrics count what the stats count.
func TestPrometheus(t *testing.T) {
	rdb, db := testenv.Redis(t, ""), testenv.MySQL(t)
	tb := newTables(t, db)
	reg := prometheus.NewPedanticRegistry()
	c := newCounter(t, rdb, &writebehind.Options{Registerer: reg, Shards: 2})
	ctx := context.Background()
	for i := range 10 {
		if err := c.Add(ctx, keyName(i%3), 1); err != nil {
			t.Fatal(err)
		}
	}
	c.AddOnce(ctx, "post:x", 1, "t1")
	c.AddOnce(ctx, "post:x", 1, "t1")
	f, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	// a second flusher on the same registry shares the metrics
	if _, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.FlushOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"cache_writebehind_adds_total":         12,
		"cache_writebehind_flushed_total":      11,
		"cache_writebehind_pending_entries":    0,
		"cache_writebehind_lag_seconds":        0,
		"cache_writebehind_batches_total":      float64(f.Stats().Batches),
		"cache_writebehind_flush_errors_total": 0,
		"cache_writebehind_claimed_total":      0,
		"cache_writebehind_redis_losses_total": 0,
		"cache_writebehind_batch_entries":      -1, // histograms: only present
		"cache_writebehind_batch_rows":         -1,
	} {
		if want < 0 {
			if n, err := testutil.GatherAndCount(reg, name); err != nil || n == 0 {
				t.Errorf("%s: %d series, %v", name, n, err)
			}
			continue
		}
		got, err := gatherSum(reg, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// gatherSum sums the values of every series of a counter or gauge family
// (0 when it has none yet).
func gatherSum(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			}
		}
	}
	return total, nil
}

// A flusher that read entries and then died (its batch failed and it never
// ran again) leaves them pending: another flusher waits behind them — it
// applies nothing out of order — until they are idle for ClaimIdle, then
// claims them and applies everything, in order, once.
func TestTakeoverAndGap(t *testing.T) {
	rdb, db := testenv.Redis(t, ""), testenv.MySQL(t)
	tb := newTables(t, db)
	c := newCounter(t, rdb, nil)
	ctx := context.Background()
	want := map[string]int64{}
	add := func(n int) {
		for i := range n {
			if err := c.Add(ctx, keyName(i%7), 1); err != nil {
				t.Fatal(err)
			}
			want[keyName(i%7)]++
		}
	}
	add(30)
	dead, err := c.NewFlusher(db, func(context.Context, *sql.Tx, []writebehind.Delta) error {
		return errors.New("dies here")
	}, &writebehind.FlusherOptions{Table: tb.applied, Consumer: "dead"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.FlushOnce(ctx); err == nil {
		t.Fatal("the dying flusher's batch succeeded")
	}
	add(20) // after the dead flusher's entries

	const idle = 300 * time.Millisecond
	f, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied, Consumer: "heir", ClaimIdle: idle})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := f.FlushOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < idle && n != 0 {
		t.Fatalf("applied %d calls past the dead flusher's pending entries", n)
	}
	time.Sleep(idle)
	drain(t, f, 10*time.Second)
	requireEqualTotals(t, db, tb.counts, want)
	if s := f.Stats(); s.Claimed == 0 || s.Applied != 50 {
		t.Fatalf("stats %+v: want the dead flusher's entries claimed and all 50 calls applied", s)
	}
}

// Dead flushers' names do not pile up in the group: consumers idle for
// 10 × ClaimIdle with nothing pending are deleted; one with entries
// pending is kept until they are claimed.
func TestReapsIdleConsumers(t *testing.T) {
	rdb, db := testenv.Redis(t, ""), testenv.MySQL(t)
	tb := newTables(t, db)
	c := newCounter(t, rdb, nil)
	ctx := context.Background()
	newFlusher := func(name string, apply writebehind.ApplyFunc) *writebehind.Flusher {
		f, err := c.NewFlusher(db, apply, &writebehind.FlusherOptions{Table: tb.applied, Consumer: name, ClaimIdle: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	fail := func(context.Context, *sql.Tx, []writebehind.Delta) error { return errors.New("dies here") }
	newFlusher("idle", applyTo(tb.counts)).FlushOnce(ctx) // a consumer with nothing pending
	if err := c.Add(ctx, "post:1", 1); err != nil {
		t.Fatal(err)
	}
	newFlusher("holder", fail).FlushOnce(ctx) // a consumer holding an entry
	consumers := func() map[string]int64 {
		cs, err := rdb.XInfoConsumers(ctx, writebehind.StreamKey(c, 0), "flushers").Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, x := range cs {
			m[x.Name] = x.Pending
		}
		return m
	}
	if got := consumers(); len(got) != 2 || got["holder"] != 1 {
		t.Fatalf("consumers %v", got)
	}
	time.Sleep(600 * time.Millisecond) // > 10 × ClaimIdle
	// The heir's pass claims the holder's entry (idle > ClaimIdle), then
	// reaps: the idle one at once, the holder once it has nothing pending.
	heir := newFlusher("heir", applyTo(tb.counts))
	drain(t, heir, 5*time.Second)
	got := consumers()
	if _, ok := got["idle"]; ok {
		t.Fatalf("consumers %v: the idle one was kept", got)
	}
	if got["heir"] != 0 {
		t.Fatalf("consumers %v", got)
	}
	requireEqualTotals(t, db, tb.counts, map[string]int64{"post:1": 1})
}
