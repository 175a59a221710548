package cdc_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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
	if st.Behind < 0 || st.EventTime.IsZero() || st.EventLagMs < 0 || st.CheckpointAgeMs < 0 || st.Events == 0 || st.Rows < 5 || st.Transactions == 0 {
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

// cachectl health, the binary, reads a real relay's status from Redis and
// its checkpoint and leader lock from the source.
func TestCachectlHealthShowsTheRunningRelay(t *testing.T) {
	s := sharedSource(t)
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "cdcops:health:")
	table := s.usersTable(t, 3)
	rec := &recorder{name: "user"}
	rules := []cdc.Rule{{Table: table, Target: rec, KeyColumn: "id", VersionColumn: "version"}}
	name := "health-" + testenv.Random(4)
	r := startRelay(t, s.dsn(), rules, &cdc.Options{Name: name, StatusRedis: rdb, StatusPrefix: prefix,
		StatusInterval: 50 * time.Millisecond, CheckpointInterval: 10 * time.Millisecond})
	mustExec(t, s.db, "UPDATE "+table+" SET version = version + 1")
	caughtUp(t, s, r)

	bin := filepath.Join(t.TempDir(), "cachectl")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build cachectl with: %v", err)
	}
	if out, err := exec.Command(gobin, "build", "-o", bin, "github.com/f4df6ac3/cache/cmd/cachectl").CombinedOutput(); err != nil {
		t.Fatalf("go build cachectl: %v\n%s", err, out)
	}
	type report struct {
		Relays struct {
			Binlog []struct {
				Name      string `json:"name"`
				Running   bool   `json:"running"`
				Instances []any  `json:"instances"`
				Status    struct {
					Host    string `json:"host"`
					PID     int    `json:"pid"`
					Applied string `json:"applied"`
					Behind  int64  `json:"behind"`
				} `json:"status"`
			} `json:"binlog"`
			Checkpoints []struct {
				Name             string `json:"name"`
				Position         string `json:"position"`
				LeaderConnection *int64 `json:"leader_connection"`
				Behind           *int64 `json:"behind"`
			} `json:"checkpoints"`
			Warnings []string `json:"warnings"`
		} `json:"relays"`
	}
	var rep report
	// The published status trails the relay by up to one interval.
	waitFor(t, 30*time.Second, "cachectl to show the relay caught up", func() bool {
		out, err := exec.Command(bin, "-redis", testenv.RedisAddr(), "-json", "health", "-pings", "1",
			"-prefix", prefix, "-dsn", s.dsn()).Output()
		if err != nil {
			t.Fatalf("cachectl health: %v\n%s", err, out)
		}
		rep = report{}
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("cachectl health: %v\n%s", err, out)
		}
		b := rep.Relays.Binlog
		return len(b) == 1 && b[0].Running && b[0].Status.Applied == "gtid:"+r.Stats().Applied.GTID && b[0].Status.Behind == 0
	})
	b := rep.Relays.Binlog[0]
	host, _ := os.Hostname()
	if b.Name != name || b.Status.Host != host || b.Status.PID != os.Getpid() || len(b.Instances) != 1 {
		t.Errorf("binlog relay: %+v", b)
	}
	var cp int
	for i, c := range rep.Relays.Checkpoints {
		if c.Name == name {
			cp = i + 1
		}
	}
	if cp == 0 {
		t.Fatalf("no checkpoint of %s in %+v", name, rep.Relays.Checkpoints)
	}
	c := rep.Relays.Checkpoints[cp-1]
	// The relay leads: its connection holds the lock. The checkpoint
	// trails the server by its own write at least.
	if c.LeaderConnection == nil || !strings.HasPrefix(c.Position, "gtid:") || c.Behind == nil || *c.Behind < 1 {
		t.Errorf("checkpoint: %+v", c)
	}
	for _, w := range rep.Relays.Warnings {
		if strings.Contains(w, name) {
			t.Errorf("warning about the running relay: %s", w)
		}
	}
}

// A relay that stops on an error no retry cures says why, where cachectl
// reads it, and leaves the instances.
func TestAStoppedRelayPublishesWhy(t *testing.T) {
	s := sharedSource(t)
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "cdcops:stopped:")
	table := s.usersTable(t, 1)
	name := "stopped-" + testenv.Random(4)
	r, err := cdc.New(s.dsn(), []cdc.Rule{{Table: table, Target: &recorder{name: "user"}, KeyColumn: "no_such_column"}},
		&cdc.Options{Name: name, Logger: quiet(), StatusRedis: rdb, StatusPrefix: prefix, StatusInterval: 20 * time.Millisecond})
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
	runErr := <-done
	if !errors.Is(runErr, cdc.ErrRule) {
		t.Fatalf("Run: %v; want ErrRule", runErr)
	}
	relays, err := relaystatus.Read(context.Background(), rdb, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(relays) != 1 || relays[0].Status == nil {
		t.Fatalf("read %+v", relays)
	}
	st := relays[0].Status
	if st.Error != runErr.Error() || st.StoppedAt.IsZero() || st.Relay != name || len(relays[0].Instances) != 0 {
		t.Errorf("stopped relay: %+v, instances %v", st, relays[0].Instances)
	}
	if ttl := rdb.TTL(context.Background(), relaystatus.StatusKey(prefix, name)).Val(); ttl < time.Hour {
		t.Errorf("the stopped record expires in %v, want about %v", ttl, relaystatus.StoppedTTL)
	}
}
