package outbox_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/outbox"
)

func TestSchema(t *testing.T) {
	for _, tc := range []struct {
		table, want string
	}{
		{"", "CREATE TABLE IF NOT EXISTS `cache_outbox` ("},
		{"inv", "CREATE TABLE IF NOT EXISTS `inv` ("},
		{"app.cache_outbox", "CREATE TABLE IF NOT EXISTS `app`.`cache_outbox` ("},
	} {
		t.Run(tc.table, func(t *testing.T) {
			s, err := outbox.Schema(tc.table)
			require.NoError(t, err)
			require.Contains(t, s, tc.want)
			require.Contains(t, s, "cache_key  VARCHAR(767) NOT NULL")
		})
	}
	for _, bad := range []string{"a b", "x;DROP TABLE y", "`t`", "a.b.c", strings.Repeat("x", 65)} {
		_, err := outbox.Schema(bad)
		require.Error(t, err, bad)
		_, err = outbox.New(&sql.DB{}, &outbox.Options{Table: bad})
		require.Error(t, err, bad)
	}
}

type nop struct{}

func (nop) Invalidate(context.Context, ...string) error { return nil }

func TestValidation(t *testing.T) {
	ctx := context.Background()
	_, err := outbox.New(nil, nil)
	require.Error(t, err)
	ob, err := outbox.New(&sql.DB{}, nil)
	require.NoError(t, err)
	require.Equal(t, outbox.DefaultTable, ob.Table())

	// Argument errors come before any use of the transaction.
	tx := &sql.Tx{}
	require.Error(t, ob.Enqueue(ctx, nil, "user", "1"))
	require.Error(t, ob.Enqueue(ctx, tx, "", "1"))
	require.Error(t, ob.Enqueue(ctx, tx, strings.Repeat("l", 192), "1"))
	require.Error(t, ob.Enqueue(ctx, tx, "user", "1", ""))
	require.Error(t, ob.Enqueue(ctx, tx, "user", strings.Repeat("k", 768)))
	require.Error(t, ob.Enqueue(ctx, tx, "user", "\xff"))
	require.NoError(t, ob.Enqueue(ctx, tx, "user"), "no keys: nothing to do")

	for _, tc := range []struct {
		name    string
		loaders map[string]outbox.Invalidator
		opts    *outbox.RelayOptions
	}{
		{"no loaders", nil, nil},
		{"empty name", map[string]outbox.Invalidator{"": nop{}}, nil},
		{"nil invalidator", map[string]outbox.Invalidator{"user": nil}, nil},
		{"negative", map[string]outbox.Invalidator{"user": nop{}}, &outbox.RelayOptions{BatchSize: -1}},
		{"backoff", map[string]outbox.Invalidator{"user": nop{}}, &outbox.RelayOptions{MinBackoff: 10e9, MaxBackoff: 1e9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ob.NewRelay(tc.loaders, tc.opts)
			require.Error(t, err)
		})
	}
}

func TestPrometheusSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	ob, err := outbox.New(&sql.DB{}, nil)
	require.NoError(t, err)
	for range 2 { // a second relay on the same registry reuses the metrics
		_, err := ob.NewRelay(map[string]outbox.Invalidator{"user": nop{}}, &outbox.RelayOptions{Registerer: reg})
		require.NoError(t, err)
	}
}

// The relay's metrics move with its work (on the real servers).
func TestPrometheusMetrics(t *testing.T) {
	ctx := context.Background()
	db := realMySQL(t)
	ob := newOutbox(t, db)
	reg := prometheus.NewRegistry()
	relay, err := ob.NewRelay(map[string]outbox.Invalidator{"user": nop{}}, &outbox.RelayOptions{Registerer: reg})
	require.NoError(t, err)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, ob.Enqueue(ctx, tx, "user", "1", "2"))
	require.NoError(t, tx.Commit())
	_, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	n, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Equal(t, 4, n, "all but cache_outbox_errors_total, which has no series before an error")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP cache_outbox_applied_total Outbox rows applied to Redis (invalidated) and deleted.
# TYPE cache_outbox_applied_total counter
cache_outbox_applied_total{table="`+ob.Table()+`"} 2
# HELP cache_outbox_pending_rows Outbox rows waiting for a relay.
# TYPE cache_outbox_pending_rows gauge
cache_outbox_pending_rows{table="`+ob.Table()+`"} 0
`), "cache_outbox_applied_total", "cache_outbox_pending_rows"))
}
