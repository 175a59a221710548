package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/relaystatus"
)

// relayLagWarn is how far behind a binlog relay may read before health
// warns: its last event older than this while the server has transactions
// it has not applied.
const relayLagWarn = 30 * time.Second

// outboxAgeWarn is how long the oldest outbox row may wait before health
// warns.
const outboxAgeWarn = time.Minute

// relayFlags are health's flags about the invalidation relays.
type relayFlags struct {
	prefix      string // the Loaders' Options.Prefix: where binlog relays publish
	dsn         string // MySQL: checkpoints, leader locks, outbox
	cdcTable    string
	outboxTable string
}

// relaysReport is what health found about the relays.
type relaysReport struct {
	Prefix string              `json:"prefix"`
	Binlog []binlogRelayReport `json:"binlog"`
	// Checkpoints (with their leader locks) and Outbox come from MySQL
	// (-dsn).
	Checkpoints []checkpointReport `json:"checkpoints,omitempty"`
	Outbox      *outboxReport      `json:"outbox,omitempty"`
	Notes       []string           `json:"notes,omitempty"` // what could not be read, and why
	Warnings    []string           `json:"warnings"`
}

// binlogRelayReport is one relay Name's published status, with the ages
// health derived from it.
type binlogRelayReport struct {
	relaystatus.Relay
	Running bool `json:"running"` // a leader's status is live (and not a stopped relay's)
	// StatusAgeSeconds is how old the status is by cachectl's clock; the
	// other ages are the relay's own, as of the status (omitted without a
	// live status, or before the first event).
	StatusAgeSeconds     *float64 `json:"status_age_seconds,omitempty"`
	EventLagSeconds      *float64 `json:"event_lag_seconds,omitempty"` // the last event's age
	CheckpointAgeSeconds *float64 `json:"checkpoint_age_seconds,omitempty"`
	LeaderForSeconds     *float64 `json:"leader_for_seconds,omitempty"`
}

// checkpointReport is one row of the binlog relays' checkpoint table.
type checkpointReport struct {
	Name       string  `json:"name"`
	Position   string  `json:"position"`
	UpdatedAt  string  `json:"updated_at"`  // in the server's time zone
	AgeSeconds float64 `json:"age_seconds"` // by the server's clock
	// Server is the server's current position; Behind the transactions
	// after the checkpoint (MariaDB GTIDs; the relay's own checkpoint write
	// is one of them).
	Server string `json:"server,omitempty"`
	Behind *int64 `json:"behind,omitempty"`
	// LeaderConnection is the id of the connection holding the relays'
	// leader lock (nil: no relay of this Name leads), LeaderHost its
	// client address ("" without the PROCESS privilege).
	LeaderConnection *int64 `json:"leader_connection"`
	LeaderHost       string `json:"leader_host,omitempty"`
}

// outboxReport is the outbox table's backlog.
type outboxReport struct {
	Table            string  `json:"table"`
	Pending          int64   `json:"pending"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"` // 0 when empty
}

// relays reads the binlog relays' status from Redis, and with f.dsn the
// checkpoints, leader locks and outbox backlog from MySQL. It returns nil
// when nothing was asked for and nothing publishes under the prefix.
func relays(ctx context.Context, rdb redis.UniversalClient, f relayFlags) (*relaysReport, error) {
	rep := &relaysReport{Prefix: f.prefix, Binlog: []binlogRelayReport{}, Warnings: []string{}}
	found, err := relaystatus.Read(ctx, rdb, f.prefix)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	secs := func(t time.Time) *float64 {
		if t.IsZero() {
			return nil
		}
		s := max(0, now.Sub(t).Seconds())
		return &s
	}
	for _, r := range found {
		br := binlogRelayReport{Relay: r, Running: r.Status != nil && r.Status.Error == ""}
		if st := r.Status; st != nil && st.Error != "" {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("binlog relay %s STOPPED at %s on %s pid %d: %s",
				r.Name, st.StoppedAt.UTC().Format(time.RFC3339), st.Host, st.PID, st.Error))
		} else if st != nil {
			ms := func(v int64) *float64 {
				if v < 0 {
					return nil
				}
				s := float64(v) / 1000
				return &s
			}
			br.StatusAgeSeconds = secs(st.PublishedAt)
			br.EventLagSeconds = ms(st.EventLagMs)
			br.CheckpointAgeSeconds = ms(st.CheckpointAgeMs)
			if !st.LeaderSince.IsZero() {
				br.LeaderForSeconds = ms(st.PublishedAt.Sub(st.LeaderSince).Milliseconds())
			}
			rep.Warnings = append(rep.Warnings, binlogWarnings(st, br.EventLagSeconds)...)
		} else {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("binlog relay %s: no leader has published its status since %s (%s ago): is a relay of this Name running, and can it reach Redis?",
				r.Name, r.LastPublished.UTC().Format(time.RFC3339), now.Sub(r.LastPublished).Round(time.Second)))
		}
		rep.Binlog = append(rep.Binlog, br)
	}
	if f.dsn != "" {
		if err := mysqlRelays(ctx, rep, f); err != nil {
			return nil, err
		}
	} else if len(found) == 0 && f.prefix == "" {
		return nil, nil
	}
	return rep, nil
}

// binlogWarnings are the warnings about a running relay's status.
func binlogWarnings(st *relaystatus.Status, lag *float64) []string {
	var w []string
	// Behind is known on MariaDB GTIDs only; elsewhere a relay whose
	// applied position is the server's is caught up.
	caughtUp := st.Behind == 0 || (st.Behind < 0 && st.Server != "" && samePosition(st.Applied, st.Server))
	if lag != nil && *lag > relayLagWarn.Seconds() && !caughtUp {
		behind := "an unknown number of"
		if st.Behind > 0 {
			behind = fmt.Sprint(st.Behind)
		}
		w = append(w, fmt.Sprintf("binlog relay %s reads %s behind (last event %.0fs ago) with %s server transactions not applied: it is slow or stuck (apply errors? a huge transaction?)",
			st.Relay, time.Duration(*lag*float64(time.Second)).Round(time.Second), *lag, behind))
	}
	if st.ApplyErrorsPerSec > 0 {
		w = append(w, fmt.Sprintf("binlog relay %s: invalidations are failing (%.1f/s): Redis unreachable, or its Loader's breaker open; the relay retries and waits",
			st.Relay, st.ApplyErrorsPerSec))
	}
	if st.Statements > 0 {
		w = append(w, fmt.Sprintf("binlog relay %s saw %d statement-logged writes (a session with binlog_format not ROW, or TRUNCATE): their keys were not invalidated",
			st.Relay, st.Statements))
	}
	return w
}

// samePosition compares two positions as written by the relay and read
// from the server (MySQL writes GTID sets with newlines, and UUIDs in
// either case).
func samePosition(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.Join(strings.Fields(s), "")) }
	return norm(a) == norm(b)
}

// mysqlRelays adds what MySQL tells: the checkpoint rows and who holds
// each relay's leader lock, and the outbox's backlog. A missing table is
// a note, not an error.
func mysqlRelays(ctx context.Context, rep *relaysReport, f relayFlags) error {
	db, err := sql.Open("mysql", f.dsn)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	if err := checkpoints(ctx, db, rep, f.cdcTable); err != nil {
		return err
	}
	return outboxBacklog(ctx, db, rep, f.outboxTable)
}

// noTable reports whether err is MySQL's "table doesn't exist".
func noTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

func checkpoints(ctx context.Context, db *sql.DB, rep *relaysReport, table string) error {
	rows, err := db.QueryContext(ctx, "SELECT name, position, CAST(updated_at AS CHAR), TIMESTAMPDIFF(MICROSECOND, updated_at, NOW(6)) FROM "+
		quoteIdent(table)+" ORDER BY name")
	if noTable(err) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("no checkpoint table %s: no binlog relay has run against this database", table))
		return nil
	}
	if err != nil {
		return fmt.Errorf("mysql: reading the checkpoints: %w", err)
	}
	defer rows.Close()
	var cps []checkpointReport
	for rows.Next() {
		var c checkpointReport
		var ageMicros sql.NullInt64
		if err := rows.Scan(&c.Name, &c.Position, &c.UpdatedAt, &ageMicros); err != nil {
			return fmt.Errorf("mysql: reading the checkpoints: %w", err)
		}
		c.AgeSeconds = float64(max(ageMicros.Int64, 0)) / 1e6
		cps = append(cps, c)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("mysql: reading the checkpoints: %w", err)
	}
	rows.Close()

	var version string
	if err := db.QueryRowContext(ctx, "SELECT @@version").Scan(&version); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	mariadb := strings.Contains(strings.ToLower(version), "mariadb")
	gtid, file := serverPositions(ctx, db, mariadb)
	for i := range cps {
		c := &cps[i]
		switch {
		case strings.HasPrefix(c.Position, "gtid:") && gtid != "":
			c.Server = "gtid:" + gtid
			if n, ok := relaystatus.Behind(strings.TrimPrefix(c.Position, "gtid:"), gtid); ok && mariadb {
				c.Behind = &n
			}
		case strings.HasPrefix(c.Position, "file:"):
			c.Server = file
		}
		var conn sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", relaystatus.LockName(c.Name)).Scan(&conn); err != nil {
			return fmt.Errorf("mysql: IS_USED_LOCK: %w", err)
		}
		if conn.Valid {
			id := conn.Int64
			c.LeaderConnection = &id
			// Other users' connections are visible with PROCESS only.
			_ = db.QueryRowContext(ctx, "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?", id).Scan(&c.LeaderHost)
		} else {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("binlog relay %s: no relay holds its leader lock on this server: none of this Name is running (its checkpoint is %.0fs old)",
				c.Name, c.AgeSeconds))
		}
	}
	rep.Checkpoints = cps
	return nil
}

// serverPositions reads the server's GTID set ("" if none) and binlog
// file position ("" without REPLICATION CLIENT / BINLOG MONITOR or a
// binlog).
func serverPositions(ctx context.Context, db *sql.DB, mariadb bool) (gtid, file string) {
	q := "SELECT @@gtid_executed"
	if mariadb {
		q = "SELECT @@gtid_binlog_pos"
	}
	var g sql.NullString
	if db.QueryRowContext(ctx, q).Scan(&g) == nil {
		gtid = g.String
	}
	for _, q := range []string{"SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"} {
		rows, err := db.QueryContext(ctx, q)
		if err != nil {
			continue
		}
		cols, _ := rows.Columns()
		if rows.Next() && len(cols) >= 2 {
			vals := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if rows.Scan(ptrs...) == nil {
				file = "file:" + string(vals[0]) + ":" + string(vals[1])
			}
		}
		rows.Close()
		break
	}
	return gtid, file
}

func outboxBacklog(ctx context.Context, db *sql.DB, rep *relaysReport, table string) error {
	var n int64
	var oldest sql.NullInt64
	err := db.QueryRowContext(ctx, "SELECT COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) FROM "+quoteIdent(table)).Scan(&n, &oldest)
	if noTable(err) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("no outbox table %s", table))
		return nil
	}
	if err != nil {
		return fmt.Errorf("mysql: reading the outbox: %w", err)
	}
	rep.Outbox = &outboxReport{Table: table, Pending: n, OldestAgeSeconds: float64(max(oldest.Int64, 0)) / 1e6}
	if age := time.Duration(rep.Outbox.OldestAgeSeconds * float64(time.Second)); n > 0 && age > outboxAgeWarn {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("outbox %s: the oldest of %d rows has waited %s: are its relays running, and can they reach Redis?",
			table, n, age.Round(time.Second)))
	}
	return nil
}

// printRelays prints the relays' section of health.
func printRelays(w io.Writer, r *relaysReport) {
	fmt.Fprintf(w, "binlog relays:    ")
	if len(r.Binlog) == 0 {
		fmt.Fprintf(w, "none publish under prefix %q (cdc.Options.StatusRedis and StatusPrefix)\n", r.Prefix)
	} else {
		fmt.Fprintf(w, "%d under prefix %q\n", len(r.Binlog), r.Prefix)
	}
	dur := func(s *float64) string {
		if s == nil {
			return "-"
		}
		return roundDur(*s)
	}
	for _, b := range r.Binlog {
		st := b.Status
		if st != nil && st.Error != "" {
			fmt.Fprintf(w, "  %s: STOPPED at %s on %s pid %d, after applying up to %s: %s\n", b.Name,
				st.StoppedAt.UTC().Format(time.RFC3339), st.Host, st.PID, st.Applied, st.Error)
			continue
		}
		if st == nil {
			fmt.Fprintf(w, "  %s: NOT RUNNING (last status %s, %s ago); %d instances seen\n", b.Name,
				b.LastPublished.UTC().Format(time.RFC3339), time.Since(b.LastPublished).Round(time.Second), len(b.Instances))
			continue
		}
		fmt.Fprintf(w, "  %s: leader %s pid %d for %s, %d instances (leader and standbys); source %s (%s), checkpoint table %s.%s\n",
			b.Name, st.Host, st.PID, dur(b.LeaderForSeconds), len(b.Instances), st.Source, st.Flavor, st.Database, st.CheckpointTable)
		behind := "unknown"
		if st.Behind >= 0 {
			behind = fmt.Sprint(st.Behind)
		}
		fmt.Fprintf(w, "    applied:      %s\n", st.Applied)
		fmt.Fprintf(w, "    server:       %s (%s transactions not applied)\n", orDash(st.Server), behind)
		fmt.Fprintf(w, "    last event:   %s ago (its time in whole seconds; grows on an idle binlog)\n", dur(b.EventLagSeconds))
		fmt.Fprintf(w, "    checkpoint:   %s, stored %s ago\n", st.Checkpoint, dur(b.CheckpointAgeSeconds))
		fmt.Fprintf(w, "    rates:        %.1f events/s, %.1f invalidations/s, %.1f failed calls/s\n", st.EventsPerSec, st.InvalidationsPerSec, st.ApplyErrorsPerSec)
		fmt.Fprintf(w, "    totals:       %d events, %d rows, %d transactions, %d invalidations, %d failed calls, %d reconnects, %d statements\n",
			st.Events, st.Rows, st.Transactions, st.Invalidations, st.ApplyErrors, st.Reconnects, st.Statements)
		fmt.Fprintf(w, "    status:       published %s ago (by this host's clock; the ages above are the relay's, as of then)\n", dur(b.StatusAgeSeconds))
	}
	for _, c := range r.Checkpoints {
		leader := "none"
		if c.LeaderConnection != nil {
			leader = fmt.Sprintf("connection %d", *c.LeaderConnection)
			if c.LeaderHost != "" {
				leader += " from " + c.LeaderHost
			}
		}
		behind := ""
		if c.Behind != nil {
			behind = fmt.Sprintf(", %d transactions after it", *c.Behind)
		}
		fmt.Fprintf(w, "checkpoint %s: %s, stored %s ago; server %s%s; leader lock: %s\n", c.Name, c.Position,
			roundDur(c.AgeSeconds), orDash(c.Server), behind, leader)
	}
	if o := r.Outbox; o != nil {
		fmt.Fprintf(w, "outbox %s: %d rows pending", o.Table, o.Pending)
		if o.Pending > 0 {
			fmt.Fprintf(w, ", the oldest %s old", roundDur(o.OldestAgeSeconds))
		}
		fmt.Fprintln(w)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", s)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// roundDur renders seconds as a duration: to the millisecond under a
// minute, to the second above.
func roundDur(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d < time.Minute {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
