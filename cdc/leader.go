package cdc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/f4df6ac3/cache/internal/relaystatus"
)

// errLostLock ends a leader's term: its lock connection failed or no
// longer holds the lock.
var errLostLock = errors.New("cdc: lost the leader lock")

// lockName is the GET_LOCK name of relays called name (64 bytes at most;
// cachectl health looks its holder up by the same name).
func lockName(name string) string { return relaystatus.LockName(name) }

// term is one leadership: the connection that holds the lock. The
// checkpoint is read and written on that connection only, so a relay that
// lost its lock (its connection died) cannot write a checkpoint after a
// successor took over.
type term struct {
	// mu serialises the statements on conn: the leader's lock check runs
	// beside the checkpoint writes, and one connection cannot interleave
	// two statements (database/sql locks it per driver call, not per
	// statement and its result; interleaved, the connection breaks, and
	// the lock goes with it).
	mu    sync.Mutex
	conn  *sql.Conn
	lock  string
	table string
	name  string
}

// campaign blocks until it holds the lock of s.name on a connection of
// db (a standby spends its life here), or ctx ends.
func campaign(ctx context.Context, db *sql.DB, s settings, backoff *backoff) (*term, error) {
	t := &term{lock: lockName(s.name), table: s.table, name: s.name}
	for {
		if t.conn == nil {
			conn, err := db.Conn(ctx)
			if err == nil {
				// A relay host that vanishes without closing its socket
				// keeps the lock only until the server drops the idle
				// connection; the leader's checks keep its own busy.
				_, err = conn.ExecContext(ctx, fmt.Sprintf("SET SESSION wait_timeout = %d", int(sessionTimeout(s.lockPoll)/time.Second)))
				if err != nil {
					conn.Close()
				}
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				s.logger.Warn("cdc: standby cannot reach the source", "relay", s.name, "error", err)
				if err := backoff.wait(ctx); err != nil {
					return nil, err
				}
				continue
			}
			t.conn = conn
		}
		var got sql.NullInt64
		wait := max(s.lockPoll.Seconds(), 0.001)
		err := t.conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?)", t.lock, wait).Scan(&got)
		switch {
		case err == nil && got.Valid && got.Int64 == 1:
			backoff.reset()
			return t, nil
		case err == nil:
			continue // held by the leader: ask again
		}
		t.conn.Close()
		t.conn = nil
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err := backoff.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// sessionTimeout is the lock connection's wait_timeout: how long the
// server keeps the lock of a relay host that vanished without closing its
// socket.
func sessionTimeout(poll time.Duration) time.Duration {
	return max(10*time.Second, (5 * poll).Round(time.Second))
}

// watch checks every poll that the term still holds the lock, and ends it
// (cancel with errLostLock) when it does not or the check fails. A check
// may take up to half the session timeout (a busy server is not a lost
// lock; but the driver closes a connection whose query timed out, and
// that releases the lock).
func (t *term) watch(ctx context.Context, poll time.Duration, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c, done := context.WithTimeout(ctx, sessionTimeout(poll)/2)
		var mine sql.NullInt64
		t.mu.Lock()
		err := t.conn.QueryRowContext(c, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", t.lock).Scan(&mine)
		t.mu.Unlock()
		done()
		if ctx.Err() != nil {
			return
		}
		if err != nil || !mine.Valid || mine.Int64 != 1 {
			cancel(fmt.Errorf("%w: %v", errLostLock, err))
			return
		}
	}
}

// close releases the lock (closing the connection would too).
func (t *term) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", t.lock)
	t.conn.Close()
}

// createTable creates the checkpoint table if it is missing.
func (t *term) createTable(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := t.conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS `"+t.table+"` ("+
		"name VARCHAR(191) NOT NULL PRIMARY KEY, "+
		"position TEXT NOT NULL, "+
		"updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
	if err != nil {
		return fmt.Errorf("cdc: creating the checkpoint table %s: %w", t.table, err)
	}
	return nil
}

// load returns the stored checkpoint, and false when there is none.
func (t *term) load(ctx context.Context) (Position, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s string
	err := t.conn.QueryRowContext(ctx, "SELECT position FROM `"+t.table+"` WHERE name = ?", t.name).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return Position{}, false, nil
	}
	if err != nil {
		return Position{}, false, fmt.Errorf("cdc: reading the checkpoint: %w", err)
	}
	p, err := ParsePosition(s)
	return p, err == nil, err
}

// save stores p as the checkpoint (autocommit: durable when it returns).
func (t *term) save(ctx context.Context, p Position) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := t.conn.ExecContext(ctx, "INSERT INTO `"+t.table+"` (name, position, updated_at) VALUES (?, ?, NOW(6)) "+
		"ON DUPLICATE KEY UPDATE position = VALUES(position), updated_at = VALUES(updated_at)", t.name, p.String())
	if err != nil {
		return fmt.Errorf("cdc: writing the checkpoint: %w", err)
	}
	return nil
}

// current is the server's current position, read on the term's
// connection.
func (t *term) current(ctx context.Context, flavor string, gtid bool) (Position, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return current(ctx, t.conn, flavor, gtid)
}

// querier is a *sql.DB or *sql.Conn.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// current returns the server's current position: where a relay without a
// checkpoint starts.
func current(ctx context.Context, q querier, flavor string, gtid bool) (Position, error) {
	if gtid {
		query := "SELECT @@gtid_binlog_pos"
		if flavor != "mariadb" {
			query = "SELECT @@gtid_executed"
		}
		var set string
		if err := q.QueryRowContext(ctx, query).Scan(&set); err != nil {
			return Position{}, fmt.Errorf("cdc: reading the current GTID set: %w", err)
		}
		if set == "" {
			// A server with no transaction yet: an empty MariaDB set, or
			// "gtid:" which String writes for it.
			return Position{}, nil
		}
		return Position{GTID: set}, nil
	}
	return masterStatus(ctx, q)
}

// masterStatus reads SHOW MASTER STATUS (SHOW BINARY LOG STATUS on MySQL
// 8.4 and later).
func masterStatus(ctx context.Context, q querier) (Position, error) {
	rows, err := q.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		rows, err = q.QueryContext(ctx, "SHOW BINARY LOG STATUS")
	}
	if err != nil {
		return Position{}, fmt.Errorf("cdc: SHOW MASTER STATUS (needs REPLICATION CLIENT / BINLOG MONITOR): %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return Position{}, err
	}
	if !rows.Next() {
		return Position{}, fmt.Errorf("%w: SHOW MASTER STATUS is empty (no binary log)", ErrSettings)
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return Position{}, err
	}
	return ParsePosition("file:" + string(vals[0]) + ":" + string(vals[1]))
}
