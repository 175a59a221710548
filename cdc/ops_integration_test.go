package cdc_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
)

// rowVersions reads every row's version of table, by key.
func rowVersions(t testing.TB, s *source, table string) map[string]int64 {
	t.Helper()
	rows, err := s.db.Query("SELECT id, version FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[strconv.FormatInt(id, 10)] = v
	}
	return out
}

// requireFloors fails unless every row's version is covered by a floor
// the relay applied (after waiting for the relay to catch up).
func requireFloors(t testing.TB, s *source, table string, rec *recorder, within time.Duration) {
	t.Helper()
	want := rowVersions(t, s, table)
	var missing []string
	deadline := time.Now().Add(within)
	for {
		got := rec.floors()
		missing = missing[:0]
		for k, v := range want {
			if v > 1 && got[k] < v { // version 1 was written before the relay started
				missing = append(missing, k+"@"+strconv.FormatInt(v, 10)+" (floor "+strconv.FormatInt(got[k], 10)+")")
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d rows changed without an invalidation of their version: %s", len(missing), len(want), strings.Join(missing[:min(5, len(missing))], ", "))
	}
}

// traffic updates random rows of table by plain SQL until stop is called,
// tolerating errors (the server may be down for a while).
func traffic(s *source, table string, keys int) (stop func() int64) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var n atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Not under ctx: a cancelled statement may still commit after
				// the driver returned (and after the test read the rows).
				_, err := s.db.Exec("UPDATE "+table+" SET version = version + 1 WHERE id = ?", 1+rand.IntN(keys))
				if err == nil {
					n.Add(1)
				} else {
					time.Sleep(20 * time.Millisecond)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return func() int64 { cancel(); wg.Wait(); return n.Load() }
}

// TestRelayFollowsDDLRotationAndServerRestartWithoutLosingInvalidations
// runs plain-SQL traffic through a DDL that moves every column (ADD COLUMN
// FIRST), FLUSH BINARY LOGS, and a restart of mariadbd (a clean shutdown:
// after a SIGKILL under writes, MariaDB 10.11's own crash recovery
// sometimes aborts on an InnoDB assertion, see testenv's Shutdown); after
// each, every row's version has been invalidated.
func TestRelayFollowsDDLRotationAndServerRestartWithoutLosingInvalidations(t *testing.T) {
	const keys = 200
	s := startSource(t)
	table := s.usersTable(t, keys)
	rec := &recorder{name: "user"}
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}},
		&cdc.Options{MaxBackoff: 200 * time.Millisecond, CheckpointInterval: 20 * time.Millisecond})

	t.Run("DDL", func(t *testing.T) {
		stop := traffic(s, table, keys)
		time.Sleep(200 * time.Millisecond)
		// Every column moves one place right: a relay that mapped rows
		// with the current schema would read id from the wrong column.
		mustExec(t, s.db, "ALTER TABLE "+table+" ADD COLUMN extra INT NOT NULL DEFAULT 7 FIRST")
		time.Sleep(200 * time.Millisecond)
		mustExec(t, s.db, "ALTER TABLE "+table+" DROP COLUMN extra")
		time.Sleep(200 * time.Millisecond)
		n := stop()
		requireFloors(t, s, table, rec, 30*time.Second)
		t.Logf("%d writes around two DDLs: every row's version invalidated", n)
	})
	t.Run("FLUSH BINARY LOGS", func(t *testing.T) {
		stop := traffic(s, table, keys)
		for range 3 {
			time.Sleep(100 * time.Millisecond)
			mustExec(t, s.db, "FLUSH BINARY LOGS")
		}
		n := stop()
		requireFloors(t, s, table, rec, 30*time.Second)
		t.Logf("%d writes across 3 binlog rotations: every row's version invalidated", n)
	})
	t.Run("server restart", func(t *testing.T) {
		stop := traffic(s, table, keys)
		time.Sleep(200 * time.Millisecond)
		terms := r.Stats().Terms
		s.m.Shutdown(t)
		time.Sleep(300 * time.Millisecond)
		s.m.Restart(t)
		time.Sleep(500 * time.Millisecond)
		n := stop()
		waitFor(t, 60*time.Second, "the relay to lead again", func() bool {
			st := r.Stats()
			return st.Leader && st.Terms > terms
		})
		requireFloors(t, s, table, rec, 60*time.Second)
		st := r.Stats()
		t.Logf("%d writes around a mariadbd SIGKILL and restart: every row's version invalidated (terms %d, reconnects %d)", n, st.Terms, st.Reconnects)
	})
}

// TestRelayAppliesA100kRowTransactionInBoundedMemory updates 100k rows in
// one transaction: every key is invalidated, and the relay's heap stays
// bounded (it applies every MaxBatch keys, not at the transaction's end).
func TestRelayAppliesA100kRowTransactionInBoundedMemory(t *testing.T) {
	rowsN := 100_000
	s := sharedSource(t)
	table := s.usersTable(t, rowsN)
	seen := make([]atomic.Bool, rowsN+1)
	var count atomic.Int64
	target := targetFunc(func(ctx context.Context, kvs ...cache.KeyVersion) error {
		for _, kv := range kvs {
			id, err := strconv.Atoi(kv.Key)
			if err != nil || id < 1 || id > rowsN || kv.Version != 2 {
				return errors.New("unexpected key " + kv.Key)
			}
			if !seen[id].Swap(true) {
				count.Add(1)
			}
		}
		return nil
	})
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: target, KeyColumn: "id", VersionColumn: "version"}}, nil)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	began := time.Now()
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2")
	committed := time.Since(began)
	waitFor(t, 120*time.Second, "every row invalidated", func() bool { return count.Load() == int64(rowsN) })
	applied := time.Since(began)
	close(stop)
	<-sampled
	caughtUp(t, s, r)
	growth := int64(peak.Load()) - int64(base)
	st := r.Stats()
	t.Logf("100k-row UPDATE: committed in %v, all %d keys invalidated %v after it began, in %d batches; heap in use grew by at most %.1f MB (sampled every 20ms; includes the test's own bookkeeping)",
		committed, rowsN, applied, st.Batches, float64(growth)/(1<<20))
	// The bound: EventBuffer events (8KB each) and MaxBatch keys, plus the
	// decoder's buffers; far below the transaction's size.
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB during a 100k-row transaction; want it bounded by the batch, not the transaction", growth>>20)
	}
}

// targetFunc is a Target of a function.
type targetFunc func(ctx context.Context, kvs ...cache.KeyVersion) error

func (f targetFunc) Name() string { return "func" }

func (f targetFunc) InvalidateVersions(ctx context.Context, kvs ...cache.KeyVersion) error {
	return f(ctx, kvs...)
}
