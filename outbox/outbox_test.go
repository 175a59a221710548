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
			require.Contains(t, s, "namespace  VARCHAR(512) NOT NULL DEFAULT ''")
		})
	}
	for _, bad := range []string{"a b", "x;DROP TABLE y", "`t`", "a.b.c", strings.Repeat("x", 65)} {
		_, err := outbox.Schema(bad)
		require.Error(t, err, bad)
		_, err = outbox.New(&sql.DB{}, &outbox.Options{Table: bad})
		require.Error(t, err, bad)
	}
}

// names is a Target: a loader name under a key prefix.
type names struct{ name, prefix string }

func (n names) Name() string        { return n.name }
func (n names) Key(k string) string { return n.prefix + n.name + ":" + k }

// nop is an Invalidator that does nothing.
type nop struct{ names }

func (nop) Invalidate(context.Context, ...string) error { return nil }

var userNop = nop{names{"user", ""}}

func TestValidation(t *testing.T) {
	ctx := context.Background()
	_, err := outbox.New(nil, nil)
	require.Error(t, err)
	ob, err := outbox.New(&sql.DB{}, nil)
	require.NoError(t, err)
	require.Equal(t, outbox.DefaultTable, ob.Table())

	// Argument errors come before any use of the transaction.
	tx := &sql.Tx{}
	require.Error(t, ob.Enqueue(ctx, nil, userNop, "1"))
	require.Error(t, ob.Enqueue(ctx, tx, nil, "1"))
	require.Error(t, ob.Enqueue(ctx, tx, names{"", ""}, "1"))
	require.Error(t, ob.Enqueue(ctx, tx, names{strings.Repeat("l", 192), ""}, "1"))
	require.Error(t, ob.Enqueue(ctx, tx, names{"user", strings.Repeat("p", 508)}, "1"), "namespace over 512 characters")
	require.Error(t, ob.Enqueue(ctx, tx, userNop, "1", ""))
	require.Error(t, ob.Enqueue(ctx, tx, userNop, strings.Repeat("k", 768)))
	require.Error(t, ob.Enqueue(ctx, tx, userNop, "\xff"))
	require.NoError(t, ob.Enqueue(ctx, tx, userNop), "no keys: nothing to do")

	for _, tc := range []struct {
		name    string
		loaders []outbox.Invalidator
		opts    *outbox.RelayOptions
	}{
		{"no loaders", nil, nil},
		{"empty name", []outbox.Invalidator{nop{names{"", ""}}}, nil},
		{"nil invalidator", []outbox.Invalidator{nil}, nil},
		{"same namespace twice", []outbox.Invalidator{userNop, nop{names{"user", ""}}}, nil},
		{"negative", []outbox.Invalidator{userNop}, &outbox.RelayOptions{BatchSize: -1}},
		{"backoff", []outbox.Invalidator{userNop}, &outbox.RelayOptions{MinBackoff: 10e9, MaxBackoff: 1e9}},
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
		_, err := ob.NewRelay([]outbox.Invalidator{userNop}, &outbox.RelayOptions{Registerer: reg})
		require.NoError(t, err)
	}
}

// The relay's metrics move with its work (on the real servers).
func TestPrometheusMetrics(t *testing.T) {
	ctx := context.Background()
	db := realMySQL(t)
	ob := newOutbox(t, db)
	reg := prometheus.NewRegistry()
	relay, err := ob.NewRelay([]outbox.Invalidator{userNop}, &outbox.RelayOptions{Registerer: reg})
	require.NoError(t, err)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, ob.Enqueue(ctx, tx, userNop, "1", "2"))
	require.NoError(t, tx.Commit())
	_, err = relay.RelayOnce(ctx)
	require.NoError(t, err)
	n, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Equal(t, 5, n, "all but cache_outbox_errors_total, which has no series before an error")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP cache_outbox_applied_total Outbox rows applied to Redis (invalidated) and deleted.
# TYPE cache_outbox_applied_total counter
cache_outbox_applied_total{table="`+ob.Table()+`"} 2
# HELP cache_outbox_pending_rows Outbox rows waiting for a relay.
# TYPE cache_outbox_pending_rows gauge
cache_outbox_pending_rows{table="`+ob.Table()+`"} 0
`), "cache_outbox_applied_total", "cache_outbox_pending_rows"))
}
