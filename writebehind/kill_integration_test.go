package writebehind_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// The flusher process of TestKilledFlushers (run by re-executing the test
// binary). It says "apply" inside every batch's transaction and
// "committed" between every commit and its acknowledgement, pausing a
// little after each, and is SIGKILLed by the parent at one of them.
func TestHelperFlusher(t *testing.T) {
	if os.Getenv("WB_HELPER_FLUSHER") != "1" {
		t.Skip("the flusher process of TestKilledFlushers")
	}
	db, err := sql.Open("mysql", testenv.MySQLDSN())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("WB_REDIS"), ContextTimeoutEnabled: true})
	c, err := writebehind.New(rdb, "likes", &writebehind.Options{Prefix: os.Getenv("WB_PREFIX"), Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	var out sync.Mutex // one line at a time on stdout
	say := func(s string) {
		out.Lock()
		fmt.Println(s)
		out.Unlock()
		time.Sleep(time.Duration(rand.N(5000)) * time.Microsecond)
	}
	apply := applyTo(os.Getenv("WB_COUNTS"))
	f, err := c.NewFlusher(db, func(ctx context.Context, tx *sql.Tx, batch []writebehind.Delta) error {
		if err := apply(ctx, tx, batch); err != nil {
			return err
		}
		say("apply")
		return nil
	}, &writebehind.FlusherOptions{Table: os.Getenv("WB_APPLIED"), ClaimIdle: 300 * time.Millisecond, Interval: 20 * time.Millisecond, BatchSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	writebehind.SetAfterCommit(func() {
		s := f.Stats()
		say(fmt.Sprintf("committed claimed=%d skipped=%d", s.Claimed, s.Skipped))
	})
	f.Run(context.Background())
	t.Fatal("not killed")
}

// Flusher processes SIGKILLed at random mid-batch — inside the transaction
// or between its commit and the acknowledgement in Redis — while writers
// keep adding: every next flusher takes over the dead one's pending
// entries, and MySQL ends up with exactly the acknowledged increments.
func TestKilledFlushers(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	rounds := 8
	if *long {
		rounds = 30
	}
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true})
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	prefix := testenv.Prefix(t, srv.Client(t), "wbtest:")
	opts := &writebehind.Options{Prefix: prefix, Shards: 4}

	// Writers add throughout.
	tl := newTally()
	ctx, stopWriters := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writeErrs atomic.Int64
	for range 2 {
		c := newCounter(t, srv.Client(t), opts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k := keyName(rand.N(50))
				// Not ctx: an Add whose caller leaves may be counted yet.
				if err := c.Add(context.Background(), k, 1); err != nil {
					writeErrs.Add(1)
					continue
				}
				tl.add(k, 1)
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}

	var killedInApply, killedAfterCommit int
	var maxClaimed, maxSkipped uint64
	for round := range rounds {
		mode := "apply"
		if round%2 == 1 {
			mode = "committed"
		}
		nth := 1 + rand.N(3)
		if round%3 == 2 {
			// Let the last one's entries go idle: this one takes them over.
			time.Sleep(350 * time.Millisecond)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFlusher$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WB_HELPER_FLUSHER=1", "WB_REDIS="+srv.Addr, "WB_PREFIX="+prefix,
			"WB_COUNTS="+tb.counts, "WB_APPLIED="+tb.applied)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		seen := make(chan bool, 1)
		go func() {
			n := 0
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				var c, s uint64
				if _, err := fmt.Sscanf(line, "committed claimed=%d skipped=%d", &c, &s); err == nil {
					maxClaimed, maxSkipped = max(maxClaimed, c), max(maxSkipped, s)
				}
				if strings.HasPrefix(line, mode) {
					if n++; n == nth {
						seen <- true
						drainLines(sc)
						return
					}
				}
			}
			seen <- false
		}()
		select {
		case ok := <-seen:
			if !ok {
				t.Fatalf("round %d: flusher exited before %q #%d; stderr:\n%s", round, mode, nth, stderr.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: flusher never said %q #%d; stderr:\n%s", round, mode, nth, stderr.String())
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: flusher ended with %v, not SIGKILL; stderr:\n%s", round, err, stderr.String())
		}
		if mode == "apply" {
			killedInApply++
		} else {
			killedAfterCommit++
		}
	}
	stopWriters()
	wg.Wait()

	// A last flusher takes over whatever the last one left pending.
	f, err := newCounter(t, srv.Client(t), opts).NewFlusher(db, applyTo(tb.counts),
		&writebehind.FlusherOptions{Table: tb.applied, ClaimIdle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // the dead flusher's entries become claimable
	drain(t, f, 60*time.Second)
	want := tl.snapshot()
	requireEqualTotals(t, db, tb.counts, want)
	s := f.Stats()
	if s.Claimed == 0 && maxClaimed == 0 {
		t.Fatalf("no flusher ever claimed a dead one's entries")
	}
	t.Logf("%d flushers killed inside a transaction, %d between commit and ack; %d increments exact (%d Add errors); "+
		"flusher processes claimed up to %d entries and skipped up to %d already applied; the last one claimed %d, skipped %d",
		killedInApply, killedAfterCommit, sum(want), writeErrs.Load(), maxClaimed, maxSkipped, s.Claimed, s.Skipped)
}

// drainLines reads the rest of the child's output so that it never blocks on
// a full pipe before the kill.
func drainLines(sc *bufio.Scanner) {
	go func() {
		for sc.Scan() {
		}
	}()
}
