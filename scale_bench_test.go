package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// scaleKeys is how many distinct cached keys BenchmarkScale reads.
const scaleKeys = 1024

// BenchmarkScale measures hit throughput of Loader.Get against the same
// work written by hand (GET of the encoded value with a deadline, and
// decoding it) at 1, 16, 64 and 256 goroutines, on distinct keys and
// on one hot key. Besides ns/op it reports the CPU time this process and
// the Redis server spent per Get (cpu-ns/op, redis-cpu-ns/op): throughput
// bought with CPU elsewhere is not a gain.
func BenchmarkScale(b *testing.B) {
	l, rdb := benchLoader(b)
	ctx := context.Background()
	for i := range scaleKeys {
		if _, err := l.Get(ctx, strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
		rawKeys(b, l, rdb, strconv.Itoa(i))
	}
	for _, hot := range []bool{false, true} {
		keys := "distinct"
		if hot {
			keys = "hot"
		}
		for _, g := range []int{1, 16, 64, 256} {
			get := func(k string) error { _, err := l.Get(ctx, k); return err }
			raw := func(k string) error { return rawRead(rdb, l, k, rawGET, true) }
			for _, impl := range []struct {
				name string
				get  func(string) error
				fail bool
			}{{"Loader.Get", get, true}, {"raw", raw, false}} {
				b.Run(fmt.Sprintf("%s/g=%d/%s", keys, g, impl.name), func(b *testing.B) {
					runScale(b, rdb, g, hot, impl.get, impl.fail)
				})
			}
		}
	}
}

// runScale runs get from goroutines goroutines. Errors of the raw reads
// (timeouts in the connection pool's queue) are counted in errors/op, as
// a hand-written cache would treat them as misses; the Loader must have
// none.
func runScale(b *testing.B, rdb *redis.Client, goroutines int, hot bool, get func(string) error, failOnError bool) {
	b.ReportAllocs()
	var errs atomic.Int64
	per := goroutines / runtime.GOMAXPROCS(0)
	if per < 1 || goroutines == 1 {
		per = 1
	}
	// Start every run without the garbage of the ones before (the fills
	// of the setup, the other implementation).
	runtime.GC()
	cpu0, rcpu0 := processCPU(), redisCPU(b, rdb)
	b.ResetTimer()
	if goroutines == 1 {
		i := rand.IntN(scaleKeys)
		for b.Loop() {
			i++
			k := "42"
			if !hot {
				k = strconv.Itoa(i % scaleKeys)
			}
			if err := get(k); err != nil {
				if failOnError {
					b.Fatal(err)
				}
				errs.Add(1)
			}
		}
	} else {
		b.SetParallelism(per)
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(scaleKeys)
			for pb.Next() {
				i++
				k := "42"
				if !hot {
					k = strconv.Itoa(i % scaleKeys)
				}
				if err := get(k); err != nil {
					if failOnError {
						b.Error(err)
						return
					}
					errs.Add(1)
				}
			}
		})
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(processCPU()-cpu0)/n, "cpu-ns/op")
	b.ReportMetric(float64(redisCPU(b, rdb)-rcpu0)/n, "redis-cpu-ns/op")
	b.ReportMetric(float64(errs.Load())/n, "errors/op")
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the user and system CPU time the Redis server has used, from
// INFO cpu.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (name == "used_cpu_sys" || name == "used_cpu_user") {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
