package writebehind_test

import (
	"context"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// On a Redis Cluster of 3 masters every script touches one slot (a shard's
// hash tag): concurrent Adds over 6 shards, a Flusher, exact totals — and
// the shards really are spread over the masters.
func TestCluster(t *testing.T) {
	rdb := testenv.Cluster(t)
	db := testenv.MySQL(t)
	tb := newTables(t, db)
	opts := &writebehind.Options{Prefix: testenv.Prefix(t, rdb, "wbtest:"), Shards: 6}
	c := newCounter(t, rdb, opts)
	f, err := c.NewFlusher(db, applyTo(tb.counts), &writebehind.FlusherOptions{Table: tb.applied, ClaimIdle: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tl := write(t, func() *writebehind.Counter { return newCounter(t, rdb, opts) }, 2, 8, 200, 3000)
	drain(t, f, 30*time.Second)
	requireEqualTotals(t, db, tb.counts, tl.snapshot())

	masters := map[string]bool{}
	for s := range 6 {
		key := writebehind.StreamKey(c, s)
		m, err := rdb.MasterForKey(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) < 2 {
		t.Fatalf("6 shards on %d master(s): the hash tags do not spread", len(masters))
	}
	t.Logf("%d increments exact on a 3-master cluster, 6 shards on %d masters", sum(tl.snapshot()), len(masters))
}
