package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/f4df6ac3/cache"
)

// User is a row of the fake database.
type User struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned: the row's version column.
func (u User) CacheVersion() int64 { return u.Version }

// fakeDB stands in for MySQL: a table of versioned rows, a fixed latency
// for every query, and counters of the queries it served.
type fakeDB struct {
	latency time.Duration
	reads   atomic.Int64
	writes  atomic.Int64

	mu   sync.Mutex // protects rows
	rows map[string]User
}

func newFakeDB(latency time.Duration, rows ...User) *fakeDB {
	db := &fakeDB{latency: latency, rows: make(map[string]User)}
	for _, u := range rows {
		db.rows[u.ID] = u
	}
	return db
}

// get is SELECT ... WHERE id = ?. A missing row is cache.ErrNotFound.
func (db *fakeDB) get(ctx context.Context, id string) (User, error) {
	db.reads.Add(1)
	if err := db.wait(ctx); err != nil {
		return User{}, err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	u, ok := db.rows[id]
	if !ok {
		return User{}, cache.ErrNotFound
	}
	return u, nil
}

// rename is UPDATE ... SET name = ?, version = version + 1 WHERE id = ?,
// returning the committed row.
func (db *fakeDB) rename(ctx context.Context, id, name string) (User, error) {
	db.writes.Add(1)
	if err := db.wait(ctx); err != nil {
		return User{}, err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	u, ok := db.rows[id]
	if !ok {
		return User{}, fmt.Errorf("rename %s: %w", id, cache.ErrNotFound)
	}
	u.Name = name
	u.Version++
	db.rows[id] = u
	return u, nil
}

// wait spends one query's latency.
func (db *fakeDB) wait(ctx context.Context) error {
	t := time.NewTimer(db.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
