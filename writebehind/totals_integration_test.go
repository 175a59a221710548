package writebehind_test

import (
	"context"
	"flag"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// long runs the long variants: 1M increments, 30 flusher kills.
var long = flag.Bool("writebehind.long", false, "run the long variants (1M increments, 30 flusher kills)")

// interval is TestTotalsExact's FlusherOptions.Interval: the longer, the
// fewer row writes per increment.
var interval = flag.Duration("writebehind.interval", time.Second, "TestTotalsExact's flush interval")

// write runs procs writers, each with a Counter and client of its own (as
// separate processes would have) shared by perProc goroutines (a process's
// concurrent requests), adding 1 to random keys of nKeys until total
// increments were acknowledged. It returns what was acknowledged.
func write(t testing.TB, newClient func() *writebehind.Counter, procs, perProc, nKeys, total int) *tally {
	t.Helper()
	tl := newTally()
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(int64(total))
	for range procs {
		c := newClient()
		for range perProc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				for left.Add(-1) >= 0 {
					k := keyName(rand.N(nKeys))
					if err := c.Add(ctx, k, 1); err != nil {
						t.Errorf("Add: %v", err)
						return
					}
					tl.add(k, 1)
				}
			}()
		}
	}
	wg.Wait()
	return tl
}

// Increments over 1,000 keys from several writers with clients of their
// own, two flushers running meanwhile: MySQL ends up holding exactly the
// acknowledged increments, in far fewer row writes than increments.
func TestTotalsExact(t *testing.T) {
	total := 30_000
	if *long {
		total = 1_000_000
	}
	const nKeys, procs, perProc = 1000, 4, 16
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true})
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	prefix := testenv.Prefix(t, srv.Client(t), "wbtest:")
	opts := &writebehind.Options{Prefix: prefix}
	fopts := &writebehind.FlusherOptions{Table: tb.applied, ClaimIdle: time.Second, Interval: *interval}

	ctx, stop := context.WithCancel(context.Background())
	var fl []*writebehind.Flusher
	var wg sync.WaitGroup
	for range 2 {
		f, err := newCounter(t, srv.Client(t), opts).NewFlusher(db, applyTo(tb.counts), fopts)
		if err != nil {
			t.Fatal(err)
		}
		fl = append(fl, f)
		wg.Add(1)
		go func() { defer wg.Done(); f.Run(ctx) }()
	}

	start := time.Now()
	tl := write(t, func() *writebehind.Counter { return newCounter(t, srv.Client(t), opts) }, procs, perProc, nKeys, total)
	took := time.Since(start)
	stop()
	wg.Wait()
	drain(t, fl[0], 60*time.Second)
	requireEqualTotals(t, db, tb.counts, tl.snapshot())

	var batches, rows, applied uint64
	for _, f := range fl {
		s := f.Stats()
		batches, rows, applied = batches+s.Batches, rows+s.Rows, applied+s.Applied
	}
	if applied != uint64(total) {
		t.Fatalf("flushers applied %d entries, want %d", applied, total)
	}
	t.Logf("%d increments over %d keys by %d writers × %d goroutines in %v (%.0f/s, -race: %v); %d transactions (%.5f per increment), %d row writes (%.4f per increment)",
		total, nKeys, procs, perProc, took.Round(time.Millisecond), float64(total)/took.Seconds(), raceEnabled,
		batches, float64(batches)/float64(total), rows, float64(rows)/float64(total))
}
