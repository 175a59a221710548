package cdc_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/relaystatus"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// The leader publishes its status where cachectl health reads it; a
// standby of the same Name shows as a second instance.
func TestRelayPublishesItsStatusForCachectl(t *testing.T) {
	s := sharedSource(t)
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "cdcops:status:")
	table := s.usersTable(t, 5)
	rec := &recorder{name: "user"}
	rules := []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}
	opts := &cdc.Options{Name: "status-" + testenv.Random(4), StatusRedis: rdb, StatusPrefix: prefix,
		StatusInterval: 50 * time.Millisecond, CheckpointInterval: 10 * time.Millisecond}
	r := startRelay(t, s.dsn(), rules, opts)
	runRelay(t, s.dsn(), rules, opts) // a standby
	for i := 1; i <= 5; i++ {
		mustExec(t, s.db, "UPDATE "+table+" SET version = version + 1 WHERE id = ?", i)
	}
	caughtUp(t, s, r)
	var server string
	if err := s.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&server); err != nil {
		t.Fatal(err)
	}

	// The published record catches up with the relay: its applied
	// position covers the server's, its counters the invalidations.
	ctx := context.Background()
	var got relaystatus.Relay
	waitFor(t, 30*time.Second, "a published status that covers "+server, func() bool {
		relays, err := relaystatus.Read(ctx, rdb, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if len(relays) != 1 || relays[0].Status == nil || len(relays[0].Instances) != 2 {
			return false
		}
		got = relays[0]
		return covers(strings.TrimPrefix(got.Status.Applied, "gtid:"), server) && got.Status.Invalidations >= 5
	})
	st := got.Status
	host, _ := os.Hostname()
	if got.Name != opts.Name || st.Relay != opts.Name || st.Host != host || st.PID != os.Getpid() ||
		st.Source != s.m.Addr || st.Flavor != "mariadb" || st.Database != "test" || st.CheckpointTable != "cache_cdc_checkpoint" {
		t.Errorf("identity: %+v", st)
	}
	if st.LeaderSince.IsZero() || st.PublishedAt.Before(st.LeaderSince) || st.IntervalMs != 50 {
		t.Errorf("times: %+v", st)
	}
	if !strings.HasPrefix(st.Checkpoint, "gtid:") || st.CheckpointAt.IsZero() || !strings.HasPrefix(st.Server, "gtid:") {
		t.Errorf("positions: %+v", st)
	}
	if st.Behind < 0 || st.EventTime.IsZero() || st.Events == 0 || st.Rows < 5 || st.Transactions == 0 {
		t.Errorf("progress: %+v", st)
	}
	if st.EventsPerSec < 0 || st.InvalidationsPerSec < 0 || st.ApplyErrorsPerSec != 0 || st.ApplyErrors != 0 {
		t.Errorf("rates: %+v", st)
	}
	self := relaystatus.InstanceID(host, os.Getpid(), "")
	for _, in := range got.Instances {
		if !strings.HasPrefix(in.ID, self) || in.LastSeen.IsZero() {
			t.Errorf("instance %+v, want %s<token>", in, self)
		}
	}
}
