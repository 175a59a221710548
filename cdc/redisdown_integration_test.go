package cdc_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestRelayWaitsForRedisAndThenInvalidates kills the Redis a Loader
// caches in (with an append-only file, so its entries survive), writes a
// row while it is down, and starts it again: the relay kept retrying
// without moving its checkpoint past the write, and the entry restored
// from the file is invalidated once Redis is back.
func TestRelayWaitsForRedisAndThenInvalidates(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	srv := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true, Args: []string{"--appendfsync", "always"}})
	rdb := srv.Client(t)
	opts := &cache.Options{TTL: 10 * time.Minute, BreakerCooldown: 100 * time.Millisecond}
	l := userLoader(t, rdb, s.db, table, "cdcdown:", opts)
	relayLoader := userLoader(t, srv.Client(t), s.db, table, "cdcdown:", opts)
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: relayLoader, KeyColumn: "id", VersionColumn: "version"}},
		&cdc.Options{CheckpointInterval: time.Millisecond})
	ctx := context.Background()
	if u, err := l.Get(ctx, "1"); err != nil || u.Version != 1 {
		t.Fatalf("Get: %+v, %v", u, err)
	}

	srv.Kill(t)
	mustExec(t, s.db, "UPDATE "+table+" SET name = 'new', version = 2 WHERE id = 1")
	var update string
	if err := s.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&update); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "failed invalidations", func() bool { return r.Stats().ApplyErrors >= 3 })
	if st := r.Stats(); covers(st.Checkpoint.GTID, update) || covers(st.Applied.GTID, update) {
		t.Fatalf("while Redis is down: checkpoint %v, applied %v; want both before the update %s", st.Checkpoint, st.Applied, update)
	}

	srv.Restart(t) // the entry of version 1 is back from the append-only file
	caughtUp(t, s, r)
	waitFor(t, 30*time.Second, "a fresh Get", func() bool {
		u, err := l.Get(ctx, "1")
		return err == nil && u.Version == 2
	})
	t.Logf("Redis down: %d failed invalidation calls retried, then applied", r.Stats().ApplyErrors)
}

// TestRunLeavesNoGoroutines stops a relay and checks it left nothing
// running.
func TestRunLeavesNoGoroutines(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	ignore := goleak.IgnoreCurrent()
	r, err := cdc.New(s.dsn(), []cdc.Rule{{Table: table, Target: &recorder{name: "user"}, KeyColumn: "id"}},
		&cdc.Options{Logger: quiet(), Reinvalidate: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, 30*time.Second, "leader", func() bool { return r.Stats().Leader })
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2")
	caughtUp(t, s, r)
	cancel()
	<-done
	r.Close()
	// The shared pool's connections each have a watcher goroutine.
	goleak.VerifyNone(t, ignore, goleak.IgnoreTopFunction("github.com/go-sql-driver/mysql.(*mysqlConn).startWatcher.func1"))
}
