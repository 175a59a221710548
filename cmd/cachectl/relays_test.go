package main

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/relaystatus"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/outbox"
)

// health shows the binlog relays that publish under -prefix: a running
// one with its positions, lag and rates, and one whose leader stopped.
// (cdc's TestRelayPublishesItsStatusForCachectl checks a real relay
// writes what relaystatus.Read returns.)
func TestHealthShowsBinlogRelays(t *testing.T) {
	rdb := realRedis(t)
	ctx := context.Background()
	prefix := testenv.Prefix(t, rdb, "cdcops:cachectl:")
	now := time.Now()
	st := &relaystatus.Status{
		Relay: "orders", Host: "relay-host-1", PID: 4242, Source: "db:3306", Flavor: "mariadb", Database: "app",
		CheckpointTable: "cache_cdc_checkpoint", LeaderSince: now.Add(-time.Hour), PublishedAt: now, IntervalMs: 1000,
		Applied: "gtid:0-1-90", Checkpoint: "gtid:0-1-88", CheckpointAt: now.Add(-2 * time.Second),
		Server: "gtid:0-1-100", Behind: 10, EventTime: now.Add(-time.Minute), EventLagMs: 60_000, CheckpointAgeMs: 2_000,
		Events: 1000, Rows: 500, Transactions: 300, Invalidations: 400, ApplyErrors: 7, Statements: 2,
		EventsPerSec: 12.5, InvalidationsPerSec: 4, ApplyErrorsPerSec: 1,
	}
	for _, id := range []string{"relay-host-1/4242/a", "relay-host-2/17/b"} {
		var rec *relaystatus.Status
		if strings.HasPrefix(id, "relay-host-1") {
			rec = st
		}
		if err := relaystatus.Publish(ctx, rdb, prefix, "orders", id, rec, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A relay Name whose leader stopped: in the index, without a status.
	if err := rdb.ZAdd(ctx, relaystatus.IndexKey(prefix), redisZ(now.Add(-10*time.Minute), "users")).Err(); err != nil {
		t.Fatal(err)
	}

	// A relay that stopped on an error no retry cures.
	if err := relaystatus.PublishStopped(ctx, rdb, prefix, "payments", &relaystatus.Status{Relay: "payments", Host: "relay-host-3",
		PID: 9, Applied: "gtid:0-1-70", Error: "cdc: a rule cannot be applied: no column tenant", StoppedAt: now}); err != nil {
		t.Fatal(err)
	}

	var r healthReport
	cachectlJSON(t, &r, "health", "-pings", "1", "-prefix", prefix)
	rel := r.Relays
	if rel == nil || rel.Prefix != prefix || len(rel.Binlog) != 3 {
		t.Fatalf("relays: %+v", rel)
	}
	orders, payments, users := rel.Binlog[0], rel.Binlog[1], rel.Binlog[2]
	if payments.Name != "payments" || payments.Running || payments.Status == nil || payments.Status.Error == "" {
		t.Errorf("payments: %+v", payments)
	}
	if orders.Name != "orders" || !orders.Running || orders.Status == nil || orders.Status.Host != "relay-host-1" ||
		orders.Status.PID != 4242 || orders.Status.Behind != 10 || len(orders.Instances) != 2 {
		t.Errorf("orders: %+v", orders)
	}
	if orders.EventLagSeconds == nil || *orders.EventLagSeconds < 59 || orders.CheckpointAgeSeconds == nil ||
		*orders.CheckpointAgeSeconds < 2 || orders.LeaderForSeconds == nil || *orders.LeaderForSeconds < 3599 {
		t.Errorf("orders' ages: %+v", orders)
	}
	if users.Name != "users" || users.Running || users.Status != nil || len(users.Instances) != 0 {
		t.Errorf("users: %+v", users)
	}
	for _, want := range []string{
		"binlog relay orders reads 1m0s behind", "with 10 server transactions not applied",
		"binlog relay orders: invalidations are failing (1.0/s)",
		"binlog relay orders saw 2 statement-logged writes",
		"binlog relay users: no leader has published its status since",
		"binlog relay payments STOPPED at ",
		"on relay-host-3 pid 9: cdc: a rule cannot be applied: no column tenant",
	} {
		if !contains(rel.Warnings, want) {
			t.Errorf("no warning %q in %q", want, rel.Warnings)
		}
	}

	out, errOut, code := cachectl(t, "health", "-pings", "1", "-prefix", prefix)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		`binlog relays:    3 under prefix "` + prefix + `"`,
		"payments: STOPPED at ",
		"after applying up to gtid:0-1-70: cdc: a rule cannot be applied",
		"orders: leader relay-host-1 pid 4242 for 1h0m0s, 2 instances",
		"applied:      gtid:0-1-90",
		"server:       gtid:0-1-100 (10 transactions not applied)",
		"checkpoint:   gtid:0-1-88, stored 2",
		"rates:        12.5 events/s, 4.0 invalidations/s, 1.0 failed calls/s",
		"users: NOT RUNNING",
		"WARNING: binlog relay users: no leader has published",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("health output lacks %q:\n%s", want, out)
		}
	}

	// Without -prefix nor -dsn, and nothing published under "": no relay
	// section (a cache without relays sees no noise).
	out, _, _ = cachectl(t, "health", "-pings", "1")
	if n, _ := rdb.Exists(ctx, relaystatus.IndexKey("")).Result(); n == 0 && strings.Contains(out, "binlog relays") {
		t.Errorf("relay section without relays:\n%s", out)
	}
}

// With -dsn, health reads the checkpoint table, who holds each relay's
// leader lock, and the outbox's backlog.
func TestHealthReadsCheckpointsLocksAndOutboxFromMySQL(t *testing.T) {
	rdb := realRedis(t)
	db := realMySQL(t)
	ctx := context.Background()
	prefix := testenv.Prefix(t, rdb, "cdcops:cachectl:")
	cp := testenv.Table(t, db, "cdcops_ckpt")
	ob := testenv.Table(t, db, "cdcops_outbox")
	mustExecDB(t, db, "CREATE TABLE "+cp+" (name VARCHAR(191) NOT NULL PRIMARY KEY, position TEXT NOT NULL, "+
		"updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
	led, idle := "cdcops-led-"+randHex(3), "cdcops-idle-"+randHex(3)
	mustExecDB(t, db, "INSERT INTO "+cp+" VALUES (?, 'gtid:0-1-5', NOW(6) - INTERVAL 3 SECOND), (?, 'file:binlog.000002:400', NOW(6))", led, idle)
	schema, err := outbox.Schema(ob)
	if err != nil {
		t.Fatal(err)
	}
	mustExecDB(t, db, schema)
	mustExecDB(t, db, "INSERT INTO "+ob+" (loader, cache_key, created_at) VALUES ('user', '1', NOW(6) - INTERVAL 2 MINUTE), ('user', '2', NOW(6))")

	// A relay leads: its connection holds the lock.
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got, connID int64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 1), CONNECTION_ID()", relaystatus.LockName(led)).Scan(&got, &connID); err != nil || got != 1 {
		t.Fatalf("GET_LOCK: %d, %v", got, err)
	}

	args := []string{"health", "-pings", "1", "-prefix", prefix, "-dsn", mysqlDSN(), "-cdc-table", cp, "-outbox-table", ob}
	var r healthReport
	cachectlJSON(t, &r, args...)
	rel := r.Relays
	if rel == nil || len(rel.Binlog) != 0 || len(rel.Checkpoints) != 2 || rel.Outbox == nil {
		t.Fatalf("relays: %+v", rel)
	}
	byName := map[string]checkpointReport{}
	for _, c := range rel.Checkpoints {
		byName[c.Name] = c
	}
	l, i := byName[led], byName[idle]
	if l.Position != "gtid:0-1-5" || l.AgeSeconds < 3 || l.LeaderConnection == nil || *l.LeaderConnection != connID || l.LeaderHost == "" {
		t.Errorf("led: %+v", l)
	}
	if i.Position != "file:binlog.000002:400" || i.LeaderConnection != nil {
		t.Errorf("idle: %+v", i)
	}
	if rel.Outbox.Table != ob || rel.Outbox.Pending != 2 || rel.Outbox.OldestAgeSeconds < 120 {
		t.Errorf("outbox: %+v", rel.Outbox)
	}
	for _, want := range []string{
		"binlog relay " + idle + ": no relay holds its leader lock",
		"outbox " + ob + ": the oldest of 2 rows has waited 2m",
	} {
		if !contains(rel.Warnings, want) {
			t.Errorf("no warning %q in %q", want, rel.Warnings)
		}
	}
	if contains(rel.Warnings, led) {
		t.Errorf("a warning about the led relay: %q", rel.Warnings)
	}

	out, errOut, code := cachectl(t, args...)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"checkpoint " + led + ": gtid:0-1-5, stored 3",
		"leader lock: connection " + itoa(connID) + " from ",
		"checkpoint " + idle + ": file:binlog.000002:400",
		"leader lock: none",
		"outbox " + ob + ": 2 rows pending, the oldest 2m",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("health output lacks %q:\n%s", want, out)
		}
	}

	// Missing tables are notes, not errors.
	r = healthReport{}
	cachectlJSON(t, &r, "health", "-pings", "1", "-prefix", prefix, "-dsn", mysqlDSN(),
		"-cdc-table", "cdcops_none_"+randHex(4), "-outbox-table", "cdcops_none_"+randHex(4))
	if r.Relays == nil || len(r.Relays.Notes) != 2 || r.Relays.Outbox != nil || len(r.Relays.Checkpoints) != 0 {
		t.Errorf("missing tables: %+v", r.Relays)
	}
}

func redisZ(at time.Time, member string) redis.Z {
	return redis.Z{Score: float64(at.UnixMilli()), Member: member}
}

func mustExecDB(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// contains reports whether one of ss contains sub.
func contains(ss []string, sub string) bool {
	for _, s := range ss {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The lag warning needs the relay to be behind: known on MariaDB GTIDs,
// and elsewhere (Behind -1) an applied position that is not the server's.
func TestBinlogLagWarning(t *testing.T) {
	lag := 120.0
	for _, tc := range []struct {
		behind          int64
		applied, server string
		warn            bool
	}{
		{0, "gtid:0-1-5", "gtid:0-1-5", false},
		{3, "gtid:0-1-2", "gtid:0-1-5", true},
		{-1, "gtid:3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5", "gtid:3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5\n", false},
		{-1, "gtid:3e11fa47-71ca-11e1-9e33-c80aa9429562:1-4", "gtid:3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", true},
		{-1, "file:binlog.000002:400", "file:binlog.000002:400", false},
		{-1, "file:binlog.000002:400", "", true},
	} {
		w := binlogWarnings(&relaystatus.Status{Relay: "r", Behind: tc.behind, Applied: tc.applied, Server: tc.server}, &lag)
		if got := contains(w, "reads 2m0s behind"); got != tc.warn {
			t.Errorf("behind %d, applied %q, server %q: warnings %q, want a lag warning: %v", tc.behind, tc.applied, tc.server, w, tc.warn)
		}
	}
}
