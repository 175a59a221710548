package cdc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/testenv"
)

func TestRelayInvalidatesInsertUpdateDeleteWithVersionFloors(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 3)
	rec := &recorder{name: "user"}
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}, nil)

	mustExec(t, s.db, "UPDATE "+table+" SET name = 'x', version = 5 WHERE id = 1")
	mustExec(t, s.db, "INSERT INTO "+table+" VALUES (4, 'new', 2)")
	mustExec(t, s.db, "DELETE FROM "+table+" WHERE id = 2")
	mustExec(t, s.db, "UPDATE "+table+" SET id = 30, version = 7 WHERE id = 3") // the key changes
	caughtUp(t, s, r)

	got := rec.floors()
	want := map[string]int64{
		"1":  5, // the after-image's version
		"4":  2,
		"2":  2, // a deleted row: its version + 1, so it cannot be cached again
		"3":  2, // the key the row left: as a delete
		"30": 7,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("key %s: floor %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("invalidated %v, want exactly %v", got, want)
	}
}

func TestRelaySkipsTablesWithoutARule(t *testing.T) {
	s := sharedSource(t)
	ruled := s.usersTable(t, 1)
	other := s.usersTable(t, 1)
	rec := &recorder{name: "user"}
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: ruled, Target: rec, KeyColumn: "id"}}, nil)
	for range 20 {
		mustExec(t, s.db, "UPDATE "+other+" SET version = version + 1")
	}
	mustExec(t, s.db, "UPDATE "+ruled+" SET version = version + 1")
	caughtUp(t, s, r)
	st := r.Stats()
	if st.Skipped < 20 {
		t.Errorf("Skipped = %d, want >= 20", st.Skipped)
	}
	if got := rec.floors(); len(got) != 1 || got["1"] != 0 {
		t.Errorf("invalidated %v, want key 1 only, without floor", got)
	}
}

func TestRelayFirstStartBeginsAtTheCurrentPositionAndResumesFromItsCheckpoint(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 10)
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2 WHERE id = 1") // before the first start: not replayed
	rec := &recorder{name: "user"}
	rules := []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}
	name := "resume-" + testenv.Random(4)
	opts := &cdc.Options{Name: name, Logger: quiet(), CheckpointInterval: time.Millisecond}

	r, err := cdc.New(s.dsn(), rules, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, 30*time.Second, "leader", func() bool { return r.Stats().Leader })
	mustExec(t, s.db, "UPDATE "+table+" SET version = 3 WHERE id = 2")
	caughtUp(t, s, r)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	r.Close()
	if got := rec.floors(); len(got) != 1 || got["2"] != 3 {
		t.Fatalf("first run invalidated %v, want only key 2 (floor 3): the first start begins at the current position", got)
	}

	// Written while no relay runs: the next one replays it from the checkpoint.
	mustExec(t, s.db, "UPDATE "+table+" SET version = 4 WHERE id = 3")
	rec.reset()
	r2 := startRelay(t, s.dsn(), rules, opts)
	caughtUp(t, s, r2)
	if got := rec.floors(); got["3"] != 4 || got["1"] != 0 {
		t.Fatalf("second run invalidated %v, want key 3 (floor 4) and not key 1", got)
	}
}

func TestRelayWaitsWhileItsTargetFailsAndDoesNotCheckpointPastIt(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	rec := &recorder{name: "user"}
	rec.setFail(errors.New("redis down"))
	opts := &cdc.Options{CheckpointInterval: time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}, opts)
	mustExec(t, s.db, "UPDATE "+table+" SET version = 9 WHERE id = 1")
	var update string
	if err := s.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&update); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "retries", func() bool { return r.Stats().ApplyErrors >= 3 })
	if st := r.Stats(); covers(st.Checkpoint.GTID, update) || covers(st.Applied.GTID, update) {
		t.Fatalf("while the target fails: checkpoint %v, applied %v; want both before the update %s", st.Checkpoint, st.Applied, update)
	}
	before := r.Stats().Checkpoint
	rec.setFail(nil)
	caughtUp(t, s, r)
	if got := rec.floors(); got["1"] != 9 {
		t.Fatalf("after the target recovered: %v, want key 1 floor 9", got)
	}
	waitFor(t, 10*time.Second, "the checkpoint to move", func() bool { return r.Stats().Checkpoint != before })
}

func TestRelayFollowsFilePositionsAcrossRotationAndRestart(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 3)
	rec := &recorder{name: "user"}
	rules := []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}
	opts := &cdc.Options{Name: "files-" + testenv.Random(4), FilePositions: true, CheckpointInterval: time.Millisecond, Logger: quiet()}
	r, err := cdc.New(s.dsn(), rules, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, 30*time.Second, "leader", func() bool { return r.Stats().Leader })
	first := r.Stats().Applied
	if first.File == "" || first.GTID != "" {
		t.Fatalf("applied %v, want a file position", first)
	}
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2 WHERE id = 1")
	mustExec(t, s.db, "FLUSH BINARY LOGS")
	mustExec(t, s.db, "UPDATE "+table+" SET version = 3 WHERE id = 2")
	waitFor(t, 30*time.Second, "both updates", func() bool { f := rec.floors(); return f["1"] == 2 && f["2"] == 3 })
	waitFor(t, 30*time.Second, "a checkpoint in the new file", func() bool {
		return r.Stats().Checkpoint.File > first.File
	})
	cancel()
	<-done
	r.Close()

	mustExec(t, s.db, "UPDATE "+table+" SET version = 4 WHERE id = 3")
	rec.reset()
	startRelay(t, s.dsn(), rules, opts)
	waitFor(t, 30*time.Second, "the update written while stopped", func() bool { return rec.floors()["3"] == 4 })
	if f := rec.floors(); f["1"] != 0 {
		t.Errorf("after the restart: %v; key 1 was replayed from before the checkpoint", f)
	}
}

func TestRelayCountsStatementLoggedWrites(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	rec := &recorder{name: "user"}
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id"}}, nil)
	c, err := s.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{"SET SESSION binlog_format = 'STATEMENT'", "UPDATE " + table + " SET version = 2 WHERE id = 1",
		"SET SESSION binlog_format = 'ROW'", "TRUNCATE TABLE " + table} {
		if _, err := c.ExecContext(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	caughtUp(t, s, r)
	if st := r.Stats(); st.Statements != 2 {
		t.Fatalf("Statements = %d, want 2 (the statement-logged UPDATE and the TRUNCATE)", st.Statements)
	}
}

func TestRelayMetricsGather(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	r := startRelay(t, s.dsn(), []cdc.Rule{{Table: table, Target: &recorder{name: "user"}, KeyColumn: "id"}}, &cdc.Options{Name: "metrics"})
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2")
	caughtUp(t, s, r)
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			got[mf.GetName()] = m.GetCounter().GetValue()
		} else {
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	if got["cache_cdc_leader"] != 1 || got["cache_cdc_invalidations_total"] < 1 || got["cache_cdc_rows_total"] < 1 {
		t.Fatalf("metrics %v", got)
	}
	waitFor(t, 10*time.Second, "Behind to be known", func() bool { return r.Stats().Behind >= 0 })
}

func TestRelayStopsWhenARuleCannotBeApplied(t *testing.T) {
	s := sharedSource(t)
	table := s.usersTable(t, 1)
	r, err := cdc.New(s.dsn(), []cdc.Rule{{Table: table, Target: &recorder{name: "user"}, KeyColumn: "no_such_column"}},
		&cdc.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, 30*time.Second, "leader", func() bool { return r.Stats().Leader })
	mustExec(t, s.db, "UPDATE "+table+" SET version = 2")
	if err := <-done; !errors.Is(err, cdc.ErrRule) {
		t.Fatalf("Run: %v; want ErrRule", err)
	}
}
