package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
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
	rdb := testenv.Redis(b, "")
	l, err := New(rdb, "bench", func(context.Context, string) (benchValue, error) { return benchRow, nil },
		&Options{Prefix: testenv.Prefix(b, rdb, "cachetest:"), TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if _, err := l.Get(context.Background(), "42"); err != nil {
		b.Fatal(err)
	}
	return l, rdb
}

// The hand-written hits a Loader's hit is measured against: GET of a key
// that holds the encoded value alone (what a user would write by hand),
// and, for the history of BENCHMARKS.md, HMGET of the eight fields of the
// hash entries of the library's format 1.
const (
	rawGET   = "GET"
	rawHMGET = "HMGET"
)

// rawKeys writes, for each of the Loader's cached keys, the encoded value
// at rawKey(key, rawGET) and a format-1 hash at rawKey(key, rawHMGET).
func rawKeys(b testing.TB, l *Loader[benchValue], rdb *redis.Client, keys ...string) {
	ctx := context.Background()
	payload, err := json.Marshal(benchRow)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if err := rdb.Set(ctx, rawKey(l, k, rawGET), payload, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
		err := rdb.HSet(ctx, rawKey(l, k, rawHMGET), "p", payload, "g", time.Now().UnixMicro(), "v", benchRow.Ver, "s", 0, "d", 1).Err()
		if err != nil {
			b.Fatal(err)
		}
		rdb.Expire(ctx, rawKey(l, k, rawHMGET), time.Hour)
	}
}

// rawKey is where rawKeys put key's value for kind: one string built per
// call, as a hand-written cache builds its key.
func rawKey(l *Loader[benchValue], key, kind string) string {
	return l.prefix + "raw" + kind + ":" + key
}

// rawHit is a hit written by hand: GET (or HMGET) of rawKey(key, kind),
// with the default RedisTimeout as deadline (or none), and decoding the
// value.
func rawHit(b testing.TB, rdb *redis.Client, l *Loader[benchValue], key, kind string, withDeadline bool) {
	if err := rawRead(rdb, l, key, kind, withDeadline); err != nil {
		b.Fatal(err)
	}
}

func rawRead(rdb *redis.Client, l *Loader[benchValue], key, kind string, withDeadline bool) error {
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if withDeadline {
		ctx, cancel = context.WithTimeout(ctx, defaultRedisTimeout)
	}
	defer cancel()
	var payload []byte
	switch kind {
	case rawGET:
		p, err := rdb.Get(ctx, rawKey(l, key, kind)).Bytes()
		if err != nil {
			return err
		}
		payload = p
	default:
		vals, err := rdb.HMGet(ctx, rawKey(l, key, kind), entry.Fields...).Result()
		if err != nil {
			return err
		}
		s, ok := vals[0].(string)
		if !ok {
			return fmt.Errorf("%s: no payload", key)
		}
		payload = []byte(s)
	}
	var v benchValue
	return json.Unmarshal(payload, &v)
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
	// The same work by hand: deadline, GET (or HMGET), decode.
	rawKeys(b, l, rdb, "42")
	raw := func(kind string, withDeadline bool) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rawHit(b, rdb, l, "42", kind, withDeadline)
			}
		}
	}
	b.Run("raw GET+decode with deadline", raw(rawGET, true))
	b.Run("raw GET+decode", raw(rawGET, false))
	b.Run("raw HMGET+decode with deadline", raw(rawHMGET, true))
}

// BenchmarkHitParallel compares hit throughput on distinct keys and on one
// hot key with raw GET+decode, at GOMAXPROCS×8 goroutines.
func BenchmarkHitParallel(b *testing.B) {
	l, rdb := benchLoader(b)
	ctx := context.Background()
	for i := range 64 {
		if _, err := l.Get(ctx, strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
		rawKeys(b, l, rdb, strconv.Itoa(i))
	}
	keyOf := func(hot bool, i int) string {
		if hot {
			return "42"
		}
		return strconv.Itoa(i % 64)
	}
	for _, hot := range []bool{false, true} {
		name := "distinct keys"
		if hot {
			name = "one hot key"
		}
		b.Run(name+"/Loader.Get", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := l.Get(ctx, keyOf(hot, i)); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
		b.Run(name+"/raw GET+decode", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					rawHit(b, rdb, l, keyOf(hot, i), rawGET, true)
				}
			})
		})
	}
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

// BenchmarkBlackhole measures Get while Redis accepts connections and never
// answers (through faultproxy), with and without the circuit breaker. It
// reports the latency distribution; run it with a fixed count, e.g.
// -benchtime=400x.
func BenchmarkBlackhole(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"breaker", Options{}},
		{"no breaker", Options{DisableBreaker: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			testenv.Redis(b, "")
			p, err := faultproxy.Start(testenv.RedisAddr())
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true})
			defer rdb.Close()
			opts := tc.opts
			opts.Prefix = testenv.Prefix(b, testenv.Redis(b, ""), "cachetest:")
			l, err := New(rdb, "bench", func(context.Context, string) (benchValue, error) { return benchRow, nil }, &opts)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			if _, err := l.Get(ctx, "42"); err != nil {
				b.Fatal(err)
			}
			if err := p.Set(faultproxy.Blackhole, 0); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := l.Get(ctx, "42"); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			at := func(q float64) float64 {
				return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
			}
			b.ReportMetric(at(0.5), "p50-ms")
			b.ReportMetric(at(0.99), "p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
		})
	}
}

// BenchmarkGetMany100 compares reading 100 cached keys with GetMany (one
// pipelined round trip) and with 100 sequential Gets.
func BenchmarkGetMany100(b *testing.B) {
	l, _ := benchLoader(b)
	ctx := context.Background()
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = "m" + strconv.Itoa(i)
		if _, err := l.Get(ctx, keys[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("GetMany", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if got, err := l.GetMany(ctx, keys); err != nil || len(got) != len(keys) {
				b.Fatal(err, len(got))
			}
		}
	})
	b.Run("100 Gets", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, k := range keys {
				if _, err := l.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
