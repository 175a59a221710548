package cache

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
)

// Benchmarks run on the real Redis (CACHE_REDIS_ADDR). The hit path is
// compared with what a hand-written cache does for the same entry: one
// HMGET of the same fields plus decoding the same bytes.

type benchValue struct {
	ID    int64    `json:"id"`
	Name  string   `json:"name"`
	Email string   `json:"email"`
	Tags  []string `json:"tags"`
	Ver   int64    `json:"ver"`
}

func (v benchValue) CacheVersion() int64 { return v.Ver }

var benchRow = benchValue{ID: 42, Name: "Ada Lovelace", Email: "ada@example.com", Tags: []string{"a", "b"}, Ver: 7}

func benchLoader(b *testing.B) (*Loader[benchValue], *redis.Client) {
	rdb := realRedis(b)
	l, err := New(rdb, "bench", func(context.Context, string) (benchValue, error) { return benchRow, nil },
		&Options{Prefix: uniquePrefix(b, rdb), TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if _, err := l.Get(context.Background(), "42"); err != nil {
		b.Fatal(err)
	}
	return l, rdb
}

func BenchmarkHit(b *testing.B) {
	l, rdb := benchLoader(b)
	ctx := context.Background()
	b.Run("Loader.Get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Get(ctx, "42"); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The same work by hand: key, deadline, HMGET, decode.
	raw := func(withDeadline bool) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				cctx, cancel := ctx, context.CancelFunc(func() {})
				if withDeadline {
					cctx, cancel = context.WithTimeout(ctx, 50*time.Millisecond)
				}
				vals, err := rdb.HMGet(cctx, l.prefix+"42", entry.Fields...).Result()
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				var v benchValue
				if err := json.Unmarshal([]byte(vals[0].(string)), &v); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("raw HMGET+decode with deadline", raw(true))
	b.Run("raw HMGET+decode", raw(false))
}

func BenchmarkHitParallel(b *testing.B) {
	l, _ := benchLoader(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Get(ctx, "42"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMiss measures a cold read: HMGET, lease (Lua), load (instant),
// fill (Lua).
func BenchmarkMiss(b *testing.B) {
	l, _ := benchLoader(b)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := l.Get(ctx, "miss"+strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInvalidate(b *testing.B) {
	l, _ := benchLoader(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Invalidate(ctx, "42"); err != nil {
			b.Fatal(err)
		}
	}
}
