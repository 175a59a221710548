package local

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// The two ways a subscriber can learn of every change of an entry:
// CLIENT TRACKING BCAST (Redis reports every modified key under the
// prefix) or a PUBLISH of the key by every script that changes an entry.
// The write is the same script in both, so the difference is what
// delivering the invalidation costs the server.
var (
	benchSet    = redis.NewScript(`redis.call('SET', KEYS[1], ARGV[1]) return 1`)
	benchSetPub = redis.NewScript(`redis.call('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', ARGV[2], KEYS[1]) return 1`)
	// A lease grant rewrites the entry's header in place.
	benchLease = redis.NewScript(`redis.call('SETRANGE', KEYS[1], 0, ARGV[1]) return 1`)
)

// BenchmarkInvalidationFanout measures the server CPU per write (the
// srv-µs/write metric) with 0..50 subscribers in both designs, written by
// 1 or 16 concurrent writers, on a Redis of its own so that other load
// does not count. A subscriber drains its
// connection in a Receive loop; the run ends when every subscriber got
// every key. keys/msg is how many keys one tracking message carried
// (BCAST batches the keys modified in one event-loop iteration).
func BenchmarkInvalidationFanout(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisConfig{})
	for _, writers := range []int{1, 16} {
		for _, mode := range []string{"tracking", "publish"} {
			for _, subs := range []int{0, 1, 10, 50} {
				b.Run(fmt.Sprintf("writers=%d/%s/subs=%d", writers, mode, subs), func(b *testing.B) {
					benchFanout(b, srv.Addr, mode, subs, writers, false)
				})
			}
		}
	}
}

// BenchmarkInvalidationCycle is BenchmarkInvalidationFanout with the
// Redis writes of one write as the Loader makes them: the invalidation,
// then a reader's lease grant and its fill (three scripts). Tracking
// reports all three modifications; with PUBLISH only the invalidation
// publishes (the tier never holds a tombstone or a lease, so a fill cannot
// replace anything it holds).
func BenchmarkInvalidationCycle(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisConfig{})
	for _, mode := range []string{"tracking", "publish"} {
		for _, subs := range []int{0, 10, 50} {
			b.Run(fmt.Sprintf("writers=16/%s/subs=%d", mode, subs), func(b *testing.B) {
				benchFanout(b, srv.Addr, mode, subs, 16, true)
			})
		}
	}
}

func benchFanout(b *testing.B, addr, mode string, subs, writers int, cycle bool) {
	ctx := context.Background()
	prefix := "local:bench:" + testenv.Random(4) + ":"
	channel := prefix + "chan"
	var keys, msgs atomic.Int64
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for range subs {
		o := &redis.Options{Addr: addr, Protocol: 2}
		ch := channel
		if mode == "tracking" {
			ch = InvalidateChannel
			o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
				id, err := cn.ClientID(ctx).Result()
				if err != nil {
					return err
				}
				return cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX", prefix).Err()
			}
		}
		c := redis.NewClient(o)
		ps := c.Subscribe(ctx, ch)
		if _, err := ps.Receive(ctx); err != nil { // the confirmation
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := ps.Receive(ctx)
				if err != nil {
					return
				}
				if m, ok := m.(*redis.Message); ok {
					msgs.Add(1)
					if m.PayloadSlice != nil {
						keys.Add(int64(len(m.PayloadSlice)))
					} else {
						keys.Add(1)
					}
				}
			}
		}()
		closers = append(closers, func() { ps.Close(); wg.Wait(); c.Close() })
	}
	w := redis.NewClient(&redis.Options{Addr: addr, PoolSize: writers})
	defer w.Close()
	script := benchSet
	if mode == "publish" {
		script = benchSetPub
	}
	for _, sc := range []*redis.Script{script, benchSet, benchLease} {
		if err := sc.Load(ctx, w).Err(); err != nil {
			b.Fatal(err)
		}
	}
	perWrite := int64(1)
	if cycle && mode == "tracking" {
		perWrite = 3
	}
	cpu0 := serverCPU(b, w)
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				key := prefix + strconv.Itoa(int(i%1000))
				if err := script.EvalSha(ctx, w, []string{key}, "v", channel).Err(); err != nil {
					b.Error(err)
					return
				}
				if cycle {
					benchLease.EvalSha(ctx, w, []string{key}, "L")
					benchSet.EvalSha(ctx, w, []string{key}, "value")
				}
			}
		}()
	}
	wg.Wait()
	want := int64(b.N) * int64(subs) * perWrite
	deadline := time.Now().Add(time.Minute)
	for keys.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if got := keys.Load(); got < want {
		b.Fatalf("subscribers got %d keys, want %d", got, want)
	}
	cpu := serverCPU(b, w) - cpu0
	b.ReportMetric(cpu*1e6/float64(b.N), "srv-µs/write")
	if m := msgs.Load(); m > 0 {
		b.ReportMetric(float64(keys.Load())/float64(m), "keys/msg")
	}
}

// serverCPU is the server's used_cpu_user + used_cpu_sys, in seconds.
func serverCPU(b *testing.B, c *redis.Client) float64 {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
}

// BenchmarkStoreGet is a tier hit without the freshness check.
func BenchmarkStoreGet(b *testing.B) {
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	st.Fill(Ticket{ok: true}, "local:k", "value", 5, time.Hour)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := st.Get("local:k"); !ok {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkStoreInvalidate is the client-side cost of applying one
// invalidated key.
func BenchmarkStoreInvalidate(b *testing.B) {
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "local:" + strconv.Itoa(i)
		st.Fill(Ticket{ok: true}, keys[i], "value", 5, time.Hour)
	}
	b.ResetTimer()
	for i := range b.N {
		st.Invalidate(keys[i%len(keys)])
	}
}

// BenchmarkBoundedHit is a bounded tier hit: Fresh, then Get.
func BenchmarkBoundedHit(b *testing.B) {
	rdb := testenv.Redis(b, "")
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	s, err := NewStream(StreamOptions{Redis: rdb.Options(), Sink: st, Prefixes: []string{"local:bench:" + testenv.Random(4) + ":"}, Interval: 2 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for !s.Up() {
		s.Wait(context.Background())
	}
	st.Fill(Ticket{ok: true}, "local:k", "value", 5, time.Hour)
	var misses atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !s.Fresh(time.Second) {
				misses.Add(1)
				continue
			}
			if _, ok := st.Get("local:k"); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.ReportMetric(float64(misses.Load())/float64(b.N), "not-fresh/op")
}

// BenchmarkStrictWait is the strict check with 256 goroutines: each Wait
// needs a barrier sent after it began, and one barrier serves all waiting.
func BenchmarkStrictWait(b *testing.B) {
	rdb := testenv.Redis(b, "")
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	s, err := NewStream(StreamOptions{Redis: rdb.Options(), Sink: st, Prefixes: []string{"local:bench:" + testenv.Random(4) + ":"}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for !s.Up() {
		s.Wait(context.Background())
	}
	before := s.Stats().Barriers
	b.SetParallelism(128)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := s.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/float64(s.Stats().Barriers-before), "waits/barrier")
}

// BenchmarkRawGet is a plain GET on the same server, for the ratios.
func BenchmarkRawGet(b *testing.B) {
	rdb := testenv.Redis(b, "")
	key := "local:bench:" + testenv.Random(4)
	rdb.Set(context.Background(), key, "value", time.Minute)
	defer rdb.Del(context.Background(), key)
	b.SetParallelism(128)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := rdb.Get(ctx, key).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStoreMemory reports what an entry costs in the Store: the heap
// growth of filling 100,000 keys of the Loader's shape (a 24-byte Redis key,
// a struct holding a ~100-byte string) divided by their number
// (heap-B/entry), next to what MaxBytes charges for it (weighed-B/entry).
func BenchmarkStoreMemory(b *testing.B) {
	type value struct {
		Name string
		Ver  int64
	}
	const n = 100_000
	payload := strings.Repeat("x", 100)
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		st := NewStore[value](StoreOptions{MaxBytes: 1 << 30})
		tk := st.Ticket()
		for i := range n {
			key := fmt.Sprintf("cache:user#2:%011d", i)
			v := value{Name: strings.Clone(payload), Ver: int64(i)}
			st.Fill(tk, key, v, len(payload)+20, time.Hour)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/entry")
		b.ReportMetric(float64(st.Stats().Bytes)/n, "weighed-B/entry")
		runtime.KeepAlive(st)
		st.Close()
	}
}
