package cache

import (
	"context"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// GetMany of 100 keys on the real Redis and MariaDB: all hits, and all
// misses loaded by one SELECT … WHERE id IN (…) (NewBatch), by one
// SELECT … WHERE id = ? per key (New), or by 100 sequential Gets.

const benchManyKeys = 100

func BenchmarkGetMany(b *testing.B) {
	rdb := testenv.Redis(b, "")
	m := newManyDB(b, benchManyKeys)
	keys := ids(1, benchManyKeys)
	ctx := context.Background()
	opts := func() *Options { return &Options{Prefix: testenv.Prefix(b, rdb, "cachetest:"), TTL: time.Hour} }
	batch, err := NewBatch(rdb, "row", m.load, opts())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { batch.Close() })
	single, err := New(rdb, "row", m.loadOne, opts())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { single.Close() })

	getMany := func(l *Loader[manyRow]) func() {
		return func() {
			got, err := l.GetMany(ctx, keys)
			if err != nil || len(got) != len(keys) {
				b.Fatal(len(got), err)
			}
		}
	}
	sequential := func(l *Loader[manyRow]) func() {
		return func() {
			for _, k := range keys {
				if _, err := l.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	// evict deletes the keys' entries, outside the timer: every key is a
	// miss in the next iteration.
	evict := func(b *testing.B, l *Loader[manyRow]) {
		b.StopTimer()
		pipe := rdb.Pipeline()
		for _, k := range keys {
			pipe.Unlink(ctx, l.Key(k))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	for _, bc := range []struct {
		name string
		l    *Loader[manyRow]
		miss bool
		run  func(l *Loader[manyRow]) func()
	}{
		{"hits/GetMany", batch, false, getMany},
		{"hits/Get×100", batch, false, sequential},
		{"misses/GetMany-batch", batch, true, getMany},
		{"misses/GetMany-per-key", single, true, getMany},
		{"misses/Get×100", single, true, sequential},
	} {
		b.Run(bc.name, func(b *testing.B) {
			run := bc.run(bc.l)
			run() // warm: fills, scripts loaded, connections open
			b.ReportAllocs()
			for b.Loop() {
				if bc.miss {
					evict(b, bc.l)
				}
				run()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchManyKeys, "ns/key")
		})
	}
}
