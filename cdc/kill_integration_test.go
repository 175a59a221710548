package cdc_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestHelperRelay is the relay process of TestKilledRelay (run by
// re-executing the test binary): it runs a relay of a Loader until it is
// killed, and prints "LEADING <unix ns>" when it becomes the leader.
func TestHelperRelay(t *testing.T) {
	if os.Getenv("CDC_HELPER_RELAY") != "1" {
		t.Skip("the relay process of TestKilledRelay")
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("CDC_REDIS"), ContextTimeoutEnabled: true})
	defer rdb.Close()
	l, err := cache.New(rdb, "user", func(ctx context.Context, key string) (user, error) {
		return user{}, fmt.Errorf("the relay process does not load")
	}, &cache.Options{Prefix: os.Getenv("CDC_PREFIX"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := cdc.New(os.Getenv("CDC_DSN"), []cdc.Rule{{
		Table: os.Getenv("CDC_TABLE"), Target: l, KeyColumn: "id", VersionColumn: "version",
	}}, &cdc.Options{
		Name: os.Getenv("CDC_NAME"), Logger: quiet(),
		CheckpointInterval: 50 * time.Millisecond, LockPoll: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for !r.Stats().Leader {
			time.Sleep(time.Millisecond)
		}
		fmt.Printf("LEADING %d\n", time.Now().UnixNano())
	}()
	t.Fatal(r.Run(context.Background())) // runs until killed
}

// relayProc is one relay process of TestKilledRelay.
type relayProc struct {
	cmd     *exec.Cmd
	leading chan time.Time // receives when it starts leading
}

// TestKilledRelay SIGKILLs the leading relay process again and again while
// rows change by plain SQL and readers fill the cache, with a standby
// process ready each time: after the writes stop, no key's cached version
// is older than its row (a lost invalidation would leave the entry cached
// before the write), and it reports how long each takeover took.
func TestKilledRelay(t *testing.T) {
	kills := 5
	if *long {
		kills = 30
	}
	const keys = 100
	s := sharedSource(t)
	table := s.usersTable(t, keys)
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "cdctest:")
	l := userLoader(t, rdb, s.db, table, prefix, &cache.Options{TTL: 10 * time.Minute})
	name := "kill-" + testenv.Random(4)

	start := func() *relayProc {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelay$", "-test.count=1")
		cmd.Env = append(os.Environ(), "CDC_HELPER_RELAY=1", "CDC_DSN="+s.dsn(), "CDC_TABLE="+table,
			"CDC_PREFIX="+prefix, "CDC_NAME="+name, "CDC_REDIS="+rdb.Options().Addr)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &relayProc{cmd: cmd, leading: make(chan time.Time, 1)}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if ns, ok := strings.CutPrefix(sc.Text(), "LEADING "); ok {
					n, _ := strconv.ParseInt(ns, 10, 64)
					p.leading <- time.Unix(0, n)
				}
			}
		}()
		return p
	}

	// The first start begins at the current position: writes go after it.
	leader := start()
	select {
	case <-leader.leading:
	case <-time.After(30 * time.Second):
		t.Fatal("the first relay process never led")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Warm every key, then keep reading (refilling what is invalidated)
	// and writing by plain SQL.
	for k := 1; k <= keys; k++ {
		if _, err := l.Get(ctx, strconv.Itoa(k)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var writes atomic.Int64
	for range 2 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				l.Get(ctx, strconv.Itoa(1+rand.IntN(keys)))
				time.Sleep(time.Millisecond)
			}
		}()
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Not under ctx: a cancelled statement may still commit
				// after the driver returned, and after the rows are read.
				if _, err := s.db.Exec("UPDATE "+table+" SET version = version + 1 WHERE id = ?", 1+rand.IntN(keys)); err == nil {
					writes.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	var takeovers []time.Duration
	for i := range kills {
		standby := start()
		time.Sleep(time.Duration(200+rand.IntN(300)) * time.Millisecond) // the standby waits on the lock; writes flow
		killed := time.Now()
		leader.cmd.Process.Kill()
		leader.cmd.Wait()
		select {
		case at := <-standby.leading:
			takeovers = append(takeovers, at.Sub(killed))
		case <-time.After(30 * time.Second):
			t.Fatalf("kill %d: the standby did not take over within 30s", i+1)
		}
		leader = standby
	}
	cancel()
	wg.Wait()

	// Every key's entry reaches its row's version (the relay catches up).
	versions := map[string]int64{}
	rows, err := s.db.Query("SELECT id, version FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		versions[strconv.FormatInt(id, 10)] = v
	}
	rows.Close()
	// A key is stale if Redis holds an entry older than its row: a lost
	// invalidation leaves the entry cached before the write (TTL 10 min).
	// An absent entry (a tombstone that expired) serves nothing stale.
	stale := func() (n int, first string) {
		for k, v := range versions {
			h, err := rdb.GetRange(context.Background(), l.Key(k), 0, entry.HeaderSize-1).Result()
			if err == nil && h == "" {
				continue
			}
			var got int64
			if err == nil {
				var e entry.Entry
				if e, err = entry.Decode(h, 0); err == nil {
					got = e.Version
				}
			}
			if err != nil || got < v {
				if first == "" {
					first = fmt.Sprintf("key %s: cached version %d (%v), row version %d", k, got, err, v)
				}
				n++
			}
		}
		return n, first
	}
	deadline := time.Now().Add(30 * time.Second)
	n, first := stale()
	for n > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n, first = stale()
	}
	if n > 0 {
		t.Fatalf("%d of %d keys kept a version older than their row after %d kills (lost invalidations); %s", n, keys, kills, first)
	}
	// And a fresh Loader (another process) reads every row as it is.
	other := userLoader(t, testenv.Redis(t, ""), s.db, table, prefix, nil)
	for k, v := range versions {
		u, err := other.Get(context.Background(), k)
		if err != nil || u.Version != v {
			t.Fatalf("key %s: Get %+v, %v; row version %d", k, u, err, v)
		}
	}
	slices.Sort(takeovers)
	t.Logf("%d SIGKILLs of the leading relay under %d plain-SQL writes: 0 of %d keys stale; standby takeover p50 %v, max %v (LockPoll 100ms)",
		kills, writes.Load(), keys, pct(takeovers, 50), takeovers[len(takeovers)-1])
}
