package outbox_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/outbox"
)

// Two services share one outbox table, each with a loader "user" under its
// own Prefix: each relay applies only its own service's rows, and a row
// stays until its owner's relay applies it.
func TestSharedTableTwoServices(t *testing.T) {
	ctx := context.Background()
	db, rdb := realMySQL(t), realRedis(t)
	ob := newOutbox(t, db)
	usersA, usersB := usersTable(t, db, 1), usersTable(t, db, 1)
	a := userLoader(t, rdb, db, usersA, uniquePrefix(t, rdb))
	b := userLoader(t, rdb, db, usersB, uniquePrefix(t, rdb))
	require.Equal(t, a.Name(), b.Name())
	require.NotEqual(t, outbox.Namespace(a), outbox.Namespace(b))
	relayA, err := ob.NewRelay([]outbox.Invalidator{a}, nil)
	require.NoError(t, err)
	relayB, err := ob.NewRelay([]outbox.Invalidator{b}, nil)
	require.NoError(t, err)

	_, err = a.Get(ctx, "1")
	require.NoError(t, err)
	_, err = b.Get(ctx, "1")
	require.NoError(t, err)
	require.NoError(t, rename(ctx, db, ob, a, usersA, 1, "a1", true))
	require.NoError(t, rename(ctx, db, ob, b, usersB, 1, "b1", true))

	// Service A's relay runs first: it takes A's row only.
	n, err := relayA.RelayOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, int64(1), relayA.Stats().Unowned, "B's row is B's")
	require.Positive(t, relayA.Stats().UnownedLag)
	ua, _ := a.Get(ctx, "1")
	require.Equal(t, "a1", ua.Name)
	ub, _ := b.Get(ctx, "1")
	require.Equal(t, "v0", ub.Name, "B's entry waits for B's relay, not stolen by A's")
	require.Equal(t, 1, rowCount(t, db, ob.Table()))

	n, err = relayB.RelayOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	ub, _ = b.Get(ctx, "1")
	require.Equal(t, "b1", ub.Name)
	require.Equal(t, 0, rowCount(t, db, ob.Table()))
}

// A table created before the namespace column: Migrate adds it, the rows
// already there (namespace ”) are applied by loader name as before, new
// rows carry the namespace. Several processes may migrate at once.
func TestMigrateAddsNamespace(t *testing.T) {
	ctx := context.Background()
	db, rdb := realMySQL(t), realRedis(t)
	table := uniqueTable(t, db, "outbox_old")
	_, err := db.Exec("CREATE TABLE " + table + ` (
  id         BIGINT       NOT NULL AUTO_INCREMENT,
  loader     VARCHAR(191) NOT NULL,
  cache_key  VARCHAR(767) NOT NULL,
  created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`)
	require.NoError(t, err)
	users := usersTable(t, db, 2)
	loader := userLoader(t, rdb, db, users, uniquePrefix(t, rdb))
	for _, id := range []string{"1", "2"} {
		_, err := loader.Get(ctx, id)
		require.NoError(t, err)
	}
	// An old writer's row: the data change and (loader, key) only.
	_, err = db.Exec("UPDATE " + users + " SET name = 'old-writer', version = version + 1 WHERE id = 1")
	require.NoError(t, err)
	_, err = db.Exec("INSERT INTO "+table+" (loader, cache_key) VALUES (?, ?)", loader.Name(), "1")
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = outbox.Migrate(ctx, db, table) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, outbox.Migrate(ctx, db, table), "idempotent")

	ob, err := outbox.New(db, &outbox.Options{Table: table})
	require.NoError(t, err)
	require.NoError(t, rename(ctx, db, ob, loader, users, 2, "new-writer", true))
	var ns string
	require.NoError(t, db.QueryRow("SELECT namespace FROM "+table+" WHERE cache_key = '2'").Scan(&ns))
	require.Equal(t, loader.Key(""), ns)

	relay, err := ob.NewRelay([]outbox.Invalidator{loader}, nil)
	require.NoError(t, err)
	n, err := relay.RelayOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the old row and the new one")
	for id, want := range map[string]string{"1": "old-writer", "2": "new-writer"} {
		u, err := loader.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, want, u.Name)
	}
}

// A row without a namespace whose loader name two of the relay's loaders
// share goes to both (the writer did not say which), and is kept while
// either fails.
func TestLegacyRowToEveryLoaderOfItsName(t *testing.T) {
	ctx := context.Background()
	db := realMySQL(t)
	ob := newOutbox(t, db)
	a := &failing{names: names{"user", "a:"}}
	b := &failing{names: names{"user", "b:"}}
	relay, err := ob.NewRelay([]outbox.Invalidator{a, b}, nil)
	require.NoError(t, err)
	_, err = db.Exec("INSERT INTO " + ob.Table() + " (loader, cache_key) VALUES ('user', 'k')")
	require.NoError(t, err)

	b.down.Store(true)
	n, err := relay.RelayOnce(ctx)
	require.Error(t, err)
	require.Equal(t, 0, n)
	require.Equal(t, 1, rowCount(t, db, ob.Table()))

	b.down.Store(false)
	n, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, int64(2), a.calls.Load(), "a ran each time: at least once")
	require.Equal(t, int64(2), b.calls.Load())
}

// Head-of-line blocking: a loader whose Invalidate keeps failing holds the
// oldest rows — more than a batch — and the rows of the healthy loader
// behind them are applied anyway, by RelayOnce and by Run, which parks the
// failing loader and tries it again with backoff.
func TestFailingLoaderDoesNotBlockOthers(t *testing.T) {
	ctx := context.Background()
	db := realMySQL(t)
	ob := newOutbox(t, db)
	down := &failing{names: names{"down", "svc:"}}
	down.down.Store(true)
	healthy := &recording{Invalidator: nop{names{"healthy", "svc:"}}, keys: make(map[string]int)}
	enqueue := func(target outbox.Target, from, n int) {
		t.Helper()
		keys := make([]string, n)
		for i := range keys {
			keys[i] = strconv.Itoa(from + i)
		}
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, ob.Enqueue(ctx, tx, target, keys...))
		require.NoError(t, tx.Commit())
	}
	const batch = 10
	enqueue(down, 0, 3*batch) // the oldest rows: three batches' worth
	enqueue(healthy, 0, 25)

	relay, err := ob.NewRelay([]outbox.Invalidator{down, healthy}, &outbox.RelayOptions{
		BatchSize: batch, PollInterval: 5 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	require.NoError(t, err)

	n, err := relay.RelayOnce(ctx)
	require.Error(t, err, "the failing loader's error is reported")
	require.Equal(t, 25, n, "every healthy row applied behind the failing loader's")
	require.Equal(t, int64(1), down.calls.Load(), "the failing loader is tried once per call")
	require.Equal(t, 3*batch, rowCount(t, db, ob.Table()))

	// Run: healthy rows written while the other loader is down keep
	// flowing; the failing loader is parked and retried with backoff.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- relay.Run(runCtx) }()
	enqueue(healthy, 100, 25)
	require.Eventually(t, func() bool { return rowCount(t, db, ob.Table()) == 3*batch }, 20*time.Second, 10*time.Millisecond,
		"the healthy rows enqueued during the outage are applied")
	healthy.mu.Lock()
	require.Len(t, healthy.keys, 50)
	healthy.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	require.Eventually(t, func() bool { return relay.Stats().Parked == 1 }, 5*time.Second, time.Millisecond)
	calls := down.calls.Load()
	// 300 ms at a 5 ms poll: about 60 drains; the parked loader is tried
	// only when its backoff (25-50, 50-100, 100-200 ms…) ends.
	require.LessOrEqual(t, calls, int64(15), "the parked loader is retried with backoff, not at every poll")

	down.down.Store(false)
	require.Eventually(t, func() bool { return rowCount(t, db, ob.Table()) == 0 }, 20*time.Second, 10*time.Millisecond)
	// The parked loader's retry that applied its rows unparks it as it
	// ends: wait for that rather than read it at once.
	require.Eventually(t, func() bool { return relay.Stats().Parked == 0 }, 20*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Equal(t, uint64(25+25+3*batch), relay.Stats().Applied)
}

// Rows nobody takes: a warning once their oldest has waited longer than
// UnownedWarnAge, not at every refresh, and again after they were gone.
func TestUnownedRowsWarnOnce(t *testing.T) {
	ctx := context.Background()
	db := realMySQL(t)
	ob := newOutbox(t, db)
	var logs strings.Builder
	relay, err := ob.NewRelay([]outbox.Invalidator{userNop}, &outbox.RelayOptions{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	old := func() {
		_, err := db.Exec("INSERT INTO " + ob.Table() + " (loader, namespace, cache_key, created_at) VALUES ('ghost', 'ghost:', 'k', NOW(6) - INTERVAL 2 MINUTE)")
		require.NoError(t, err)
	}
	_, err = db.Exec("INSERT INTO " + ob.Table() + " (loader, namespace, cache_key) VALUES ('other', 'other:', 'k')")
	require.NoError(t, err)
	_, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	require.Empty(t, logs.String(), "a fresh row of another service is no news")

	old()
	for range 3 {
		_, err = relay.RelayOnce(ctx)
		require.NoError(t, err)
	}
	require.Equal(t, 1, strings.Count(logs.String(), "have waited long"), logs.String())
	require.Greater(t, relay.Stats().UnownedLag, outbox.UnownedWarnAge)

	_, err = db.Exec("DELETE FROM " + ob.Table() + " WHERE namespace = 'ghost:'")
	require.NoError(t, err)
	_, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	old()
	_, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(logs.String(), "have waited long"), logs.String())
}
