package writebehind_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// writers adds 1 to random keys from n goroutines (clients of their own)
// until stop is called. With retry, each increment is an AddOnce retried
// with its token until it succeeds, so an increment whose reply was lost
// counts once; without, a failed Add is dropped and counted in errs (it
// may or may not have been counted).
type writers struct {
	tl     *tally
	errs   atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startWriters(t testing.TB, newClient func() *writebehind.Counter, n, nKeys int, retry bool) *writers {
	t.Helper()
	w := &writers{tl: newTally()}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for i := range n {
		c := newClient()
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for seq := 0; ctx.Err() == nil; seq++ {
				k := keyName(rand.N(nKeys))
				token := "w" + strconv.Itoa(i) + ":" + strconv.Itoa(seq) + ":" + testenv.Random(4)
				for {
					actx, acancel := context.WithTimeout(context.Background(), time.Second)
					err := c.AddOnce(actx, k, 1, token)
					acancel()
					if err == nil {
						w.tl.add(k, 1)
						break
					}
					w.errs.Add(1)
					if !retry {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	return w
}

func (w *writers) stop() *tally {
	w.cancel()
	w.wg.Wait()
	return w.tl
}

// runFlusher runs f until the test ends (or the returned stop is called).
func runFlusher(t testing.TB, f *writebehind.Flusher) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// MySQL unreachable for a while — connections refused, then reset mid-
// transaction, then swallowed — while writers keep adding: Adds keep
// succeeding, the flusher fails and backs off, and once MySQL is back the
// totals are exact.
func TestMySQLDown(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true})
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	proxy, err := faultproxy.Start(mysqlAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	cfg, _ := mysql.ParseDSN(testenv.MySQLDSN())
	cfg.Addr = proxy.Addr()
	cfg.Timeout = time.Second
	// COMMIT takes no context: without a read timeout a blackholed MySQL
	// holds it (and the flusher) forever. The README says to set one.
	cfg.ReadTimeout, cfg.WriteTimeout = 2*time.Second, 2*time.Second
	pdb, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pdb.Close() })
	mysql.SetLogger(mysqlQuiet{})

	opts := &writebehind.Options{Prefix: testenv.Prefix(t, srv.Client(t), "wbtest:"), Shards: 4}
	f, err := newCounter(t, srv.Client(t), opts).NewFlusher(pdb, applyTo(tb.counts), &writebehind.FlusherOptions{
		Table: tb.applied, Interval: 20 * time.Millisecond, ApplyTimeout: time.Second,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, ClaimIdle: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopFlusher := runFlusher(t, f)
	w := startWriters(t, func() *writebehind.Counter { return newCounter(t, srv.Client(t), opts) }, 2, 100, true)

	time.Sleep(500 * time.Millisecond)
	for _, m := range []faultproxy.Mode{faultproxy.Refuse, faultproxy.Reset, faultproxy.Blackhole} {
		if err := proxy.Set(m, 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
		if err := proxy.Set(faultproxy.Pass, 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	tl := w.stop()
	stopFlusher()
	drain(t, f, 60*time.Second)
	requireEqualTotals(t, db, tb.counts, tl.snapshot())
	s := f.Stats()
	if s.Errors == 0 {
		t.Fatal("the flusher never failed: MySQL was never down for it")
	}
	t.Logf("%d increments exact across MySQL refused/reset/blackholed; %d failed flush passes, %d Add errors (retried)", sum(tl.snapshot()), s.Errors, w.errs.Load())
}

// mysqlAddr is the host:port of the real MySQL.
func mysqlAddr(t testing.TB) string {
	cfg, err := mysql.ParseDSN(testenv.MySQLDSN())
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Addr
}

type mysqlQuiet struct{}

func (mysqlQuiet) Print(...any) {}

// Redis SIGKILLed mid-traffic and restarted from its append-only file:
// writers retry their failed AddOnce calls with the same token, flushers
// retry. With appendfsync always the totals are exact — each increment
// counted once, nothing acknowledged lost. With everysec a killed process
// loses nothing unless Redis had postponed an AOF write behind a slow
// fsync (it then replies first, for up to 2 s): the loss must stay within
// what was acknowledged in the 2 s before each kill, and is reported.
func TestRedisRestartAOF(t *testing.T) {
	for _, fsync := range []string{"always", "everysec"} {
		t.Run(fsync, func(t *testing.T) { testRedisRestartAOF(t, fsync) })
	}
}

func testRedisRestartAOF(t *testing.T, fsync string) {
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true, Args: []string{"--appendfsync", fsync}})
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	admin := srv.Client(t)
	opts := &writebehind.Options{Prefix: testenv.Prefix(t, admin, "wbtest:"), Shards: 4}
	f, err := newCounter(t, srv.Client(t), opts).NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{
		Table: tb.applied, Interval: 20 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, ClaimIdle: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopFlusher := runFlusher(t, f)
	w := startWriters(t, func() *writebehind.Counter { return newCounter(t, srv.Client(t), opts) }, 2, 100, true)
	var kills []time.Time
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		kills = append(kills, time.Now())
		srv.Kill(t)
		time.Sleep(300 * time.Millisecond)
		srv.Restart(t)
	}
	time.Sleep(500 * time.Millisecond)
	tl := w.stop()
	stopFlusher()
	drain(t, f, 60*time.Second)
	want := tl.snapshot()
	if fsync == "always" {
		requireEqualTotals(t, db, tb.counts, want)
		t.Logf("%d increments exact across 2 Redis kills (appendfsync always); %d Add errors retried with their token; %d flush errors",
			sum(want), w.errs.Load(), f.Stats().Errors)
		return
	}
	bound := tl.ackedBefore(kills, 2*time.Second)
	got := dbTotals(t, db, tb.counts)
	for k, v := range got {
		if v > want[k] {
			t.Fatalf("%s: db %d, more than the %d acknowledged", k, v, want[k])
		}
	}
	lost := sum(want) - sum(got)
	if lost > bound {
		t.Fatalf("lost %d acknowledged increments, more than the %d acknowledged in the 2 s before the kills", lost, bound)
	}
	t.Logf("appendfsync everysec: %d of %d acknowledged increments lost across 2 Redis kills (bound here: %d); %d Add errors retried; %d Redis losses detected",
		lost, sum(want), bound, w.errs.Load(), f.Stats().RedisLosses)
}

// Redis without persistence, SIGKILLed and restarted empty: exactly the
// deltas not yet flushed are lost — the stated bound — and the flusher
// notices the log restarted (RedisLosses) and carries on; later
// increments are flushed exactly.
func TestRedisRestartNoPersistence(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisConfig{})
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	admin := srv.Client(t)
	opts := &writebehind.Options{Prefix: testenv.Prefix(t, admin, "wbtest:"), Shards: 4}
	c := newCounter(t, srv.Client(t), opts)
	f, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied, ClaimIdle: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	newClient := func() *writebehind.Counter { return newCounter(t, srv.Client(t), opts) }

	// Phase 1: counted with the flusher running, then drained.
	stopFlusher := runFlusher(t, f)
	tl1 := startWriters(t, newClient, 2, 100, true)
	time.Sleep(500 * time.Millisecond)
	before := tl1.stop().snapshot()
	stopFlusher()
	drain(t, f, 30*time.Second)
	requireEqualTotals(t, db, tb.counts, before)

	// Phase 2: counted, not flushed; then Redis dies with them.
	tl2 := startWriters(t, newClient, 2, 100, false)
	time.Sleep(300 * time.Millisecond)
	unflushed := tl2.stop().snapshot()
	var pending int64
	for k := range unflushed {
		p, err := c.Pending(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		pending += p
	}
	if pending != sum(unflushed) {
		t.Fatalf("Pending says %d, writers counted %d", pending, sum(unflushed))
	}
	srv.Kill(t)
	srv.Restart(t)

	// Phase 3: counted after the restart, flushed.
	tl3 := startWriters(t, newClient, 2, 100, true)
	time.Sleep(300 * time.Millisecond)
	after := tl3.stop().snapshot()
	drain(t, f, 30*time.Second)

	want := before
	for k, v := range after {
		want[k] += v
	}
	requireEqualTotals(t, db, tb.counts, want)
	if f.Stats().RedisLosses == 0 {
		t.Fatal("the flusher did not notice that Redis lost its log")
	}
	t.Logf("lost exactly the %d unflushed increments (of %d acknowledged); %d before and %d after the restart flushed exactly; %d log restarts detected",
		sum(unflushed), sum(before)+sum(unflushed)+sum(after), sum(before), sum(after), f.Stats().RedisLosses)
}
