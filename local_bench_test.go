package cache

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// BenchmarkLocal measures Loader.Get with the in-process tier against the
// hand-written GET + decode of BenchmarkScale, in the shapes issue 12 asks
// for: bounded (MaxLag 100ms) on one hot key, and strict on 1,024 keys,
// at 1, 64 and 256 goroutines. local/op is the share of Gets the tier
// answered (the rest read Redis: a barrier not yet back, a fill refused).
func BenchmarkLocal(b *testing.B) {
	ctx := context.Background()
	rdb := testenv.Redis(b, "")
	for _, c := range []struct {
		name string
		lag  time.Duration
		hot  bool
	}{{"bounded/hot", 100 * time.Millisecond, true}, {"strict/distinct", 0, false}} {
		l, err := New(rdb, "bench", func(context.Context, string) (benchValue, error) { return benchRow, nil },
			&Options{Prefix: testenv.Prefix(b, rdb, "cachetest:"), TTL: time.Hour, Local: &LocalOptions{MaxLag: c.lag}})
		if err != nil {
			b.Fatal(err)
		}
		for !l.tier.stream.Up() {
			if l.tier.stream.Wait(ctx) != nil {
				time.Sleep(time.Millisecond)
			}
		}
		for round := range 2 { // load, then (once the lease and fill messages are applied) fill the tier
			for i := range scaleKeys {
				if _, err := l.Get(ctx, strconv.Itoa(i)); err != nil {
					b.Fatal(err)
				}
				if round == 0 {
					rawKeys(b, l, rdb, strconv.Itoa(i))
				}
			}
			if err := l.tier.stream.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
		for _, g := range []int{1, 64, 256} {
			get := func(k string) error { _, err := l.Get(ctx, k); return err }
			raw := func(k string) error { return rawRead(rdb, l, k, rawGET, true) }
			b.Run(fmt.Sprintf("%s/g=%d/Loader.Get", c.name, g), func(b *testing.B) {
				before := l.Stats().LocalHits
				runScale(b, rdb, g, c.hot, get, true)
				b.ReportMetric(float64(l.Stats().LocalHits-before)/float64(b.N), "local/op")
			})
			b.Run(fmt.Sprintf("%s/g=%d/raw", c.name, g), func(b *testing.B) {
				runScale(b, rdb, g, c.hot, raw, false)
			})
		}
		l.Close()
	}
}
