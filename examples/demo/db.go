package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	sqle "github.com/dolthub/go-mysql-server"
	"github.com/dolthub/go-mysql-server/memory"
	"github.com/dolthub/go-mysql-server/server"
	gms "github.com/dolthub/go-mysql-server/sql"
	_ "github.com/go-sql-driver/mysql" // the driver a real service would use

	"github.com/f4df6ac3/cache"
)

// User is a row of the users table.
type User struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned: the row's version column.
func (u User) CacheVersion() int64 { return u.Version }

// store is the users table behind go-sql-driver/mysql: the same SQL runs
// against the embedded go-mysql-server and a real MySQL or MariaDB. It adds
// a fixed latency to every query (an embedded server answers in
// microseconds; a real one across a network does not) and counts queries.
type store struct {
	db      *sql.DB
	table   string
	latency time.Duration
	// hold makes chosen SELECTs slow readers: they read their row, then
	// wait before returning it (see race.go).
	hold   selectHold
	reads  atomic.Int64 // SELECTs
	writes atomic.Int64 // UPDATEs
	// floor, while set (the race phase), returns the version of a row
	// whose write has returned; staleSelects counts the SELECTs that began
	// after it and still read an older version: the database's own
	// anomaly, which no cache in front of it can hide.
	floor        atomic.Pointer[func(id string) int64]
	staleSelects atomic.Int64
	owned        bool   // the table was created by this run and is dropped on close
	stop         func() // stops the embedded server, if any
}

// openStore connects to dsn, or to a fresh embedded server when dsn is "",
// and creates a users table of rows 1..rows.
func openStore(ctx context.Context, dsn string, rows int, latency time.Duration) (*store, error) {
	s := &store{table: "users", latency: latency, stop: func() {}}
	if dsn == "" {
		addr, stop, err := startEmbeddedMySQL()
		if err != nil {
			return nil, fmt.Errorf("embedded MySQL server: %w", err)
		}
		s.stop = stop
		dsn = "root@tcp(" + addr + ")/demo"
	} else {
		// A shared server: a table of our own, dropped on close.
		s.table = "cache_demo_users_" + randomHex()
		s.owned = true
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		s.stop()
		return nil, err
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	s.db = db
	if err := s.create(ctx, rows); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *store) create(ctx context.Context, rows int) error {
	if _, err := s.db.ExecContext(ctx, "CREATE TABLE "+s.table+
		" (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, version BIGINT NOT NULL)"); err != nil {
		return err
	}
	const batch = 500
	for first := 1; first <= rows; first += batch {
		var (
			q    strings.Builder
			args []any
		)
		q.WriteString("INSERT INTO " + s.table + " (id, name, version) VALUES ")
		for id := first; id < first+batch && id <= rows; id++ {
			if id > first {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, 1)")
			args = append(args, id, fmt.Sprintf("user %d", id))
		}
		if _, err := s.db.ExecContext(ctx, q.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// get is SELECT ... WHERE id = ?. A missing row is cache.ErrNotFound.
func (s *store) get(ctx context.Context, id string) (User, error) {
	s.reads.Add(1)
	if err := sleep(ctx, s.latency); err != nil {
		return User{}, err
	}
	var floor int64
	if f := s.floor.Load(); f != nil {
		floor = (*f)(id)
	}
	u := User{ID: id}
	err := s.db.QueryRowContext(ctx, "SELECT name, version FROM "+s.table+" WHERE id = ?", id).Scan(&u.Name, &u.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, cache.ErrNotFound
	}
	if err != nil {
		return User{}, err
	}
	if u.Version < floor {
		s.staleSelects.Add(1)
	}
	return u, s.hold.wait(ctx, id)
}

// rename is UPDATE ... SET name = ?, version = version + 1 WHERE id = ?,
// returning the committed row.
func (s *store) rename(ctx context.Context, id, name string) (User, error) {
	s.writes.Add(1)
	if err := sleep(ctx, s.latency); err != nil {
		return User{}, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return User{}, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "UPDATE "+s.table+" SET name = ?, version = version + 1 WHERE id = ?", name, id); err != nil {
		return User{}, err
	}
	u := User{ID: id}
	if err := tx.QueryRowContext(ctx, "SELECT name, version FROM "+s.table+" WHERE id = ?", id).Scan(&u.Name, &u.Version); err != nil {
		return User{}, fmt.Errorf("rename %s: %w", id, err)
	}
	return u, tx.Commit()
}

// close drops the table if this run created it on a shared server, and
// stops the embedded server.
func (s *store) close() {
	if s.owned {
		s.db.Exec("DROP TABLE IF EXISTS " + s.table)
	}
	s.db.Close()
	s.stop()
}

// startEmbeddedMySQL starts go-mysql-server with an empty in-memory
// database "demo" on a free loopback port, user root without password.
func startEmbeddedMySQL() (addr string, stop func(), err error) {
	db := memory.NewDatabase("demo")
	db.BaseDatabase.EnablePrimaryKeyIndexes()
	pro := memory.NewDBProvider(db)
	engine := sqle.NewDefault(pro)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv, err := server.NewServer(server.Config{Protocol: "tcp", Listener: l}, engine, gms.NewContext, memory.NewSessionBuilder(pro), nil)
	if err != nil {
		l.Close()
		return "", nil, err
	}
	go srv.Start()
	return l.Addr().String(), func() { srv.Close() }, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
