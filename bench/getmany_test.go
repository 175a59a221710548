package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gcache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// BenchmarkGetMany compares reading 100 keys at once, all cached or all
// missing, through this library's GetMany (misses loaded by one
// SELECT … WHERE id IN (…) with NewBatch, or by one SELECT per key with New)
// and through go-redis/cache, which has no multi-key read: Once per key,
// sequentially or 16 at a time (its local cache off, so that every read
// reaches Redis as this library's do).

const manyKeys = 100

func benchEnv(b *testing.B) *Env {
	e, err := NewEnv(context.Background(), env("CACHE_REDIS_ADDR", "127.0.0.1:6379"),
		env("CACHE_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"), manyKeys)
	if err != nil {
		if strings.Contains(err.Error(), "unreachable") && os.Getenv("CI") == "" && os.Getenv("CACHE_REQUIRE_SERVERS") != "1" {
			b.Skip(err)
		}
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	return e
}

// selectIn reads rows by id with one query.
func selectIn(ctx context.Context, e *Env, ids []string) (map[string]Row, error) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := e.DB.QueryContext(ctx, "SELECT id, val, version FROM "+e.Table+
		" WHERE id IN (?"+strings.Repeat(",?", len(ids)-1)+")", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]Row, len(ids))
	for rows.Next() {
		var r Row
		if err := rows.Scan(&r.ID, &r.Val, &r.Version); err != nil {
			return nil, err
		}
		out[strconv.FormatInt(r.ID, 10)] = r
	}
	return out, rows.Err()
}

// manyReader reads all keys, and names the Redis key of one.
type manyReader struct {
	name string
	read func(ctx context.Context, ids []string) error
	rkey func(id string) string
}

func manyReaders(b *testing.B, e *Env) []manyReader {
	rdb := redis.NewClient(&redis.Options{Addr: e.RedisAddr, ContextTimeoutEnabled: true})
	b.Cleanup(func() { rdb.Close() })
	opts := func() *cache.Options {
		return &cache.Options{Prefix: e.Namespace("getmany", "lib"), TTL: time.Hour,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	batch, err := cache.NewBatch(rdb, "r", func(ctx context.Context, ids []string) (map[string]Row, error) {
		return selectIn(ctx, e, ids)
	}, opts())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { batch.Close() })
	single, err := cache.New(rdb, "r", cache.LoadFunc[Row](e.Select), opts())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { single.Close() })
	getMany := func(l *cache.Loader[Row]) func(ctx context.Context, ids []string) error {
		return func(ctx context.Context, ids []string) error {
			got, err := l.GetMany(ctx, ids)
			if err == nil && len(got) != len(ids) {
				b.Fatalf("%d of %d rows", len(got), len(ids))
			}
			return err
		}
	}

	grc := newClient(e.RedisAddr)
	b.Cleanup(func() { grc.Close() })
	gc := gcache.New(&gcache.Options{Redis: grc})
	ns := e.Namespace("getmany", "go-redis/cache")
	once := func(ctx context.Context, id string) error {
		var r Row
		return gc.Once(&gcache.Item{Ctx: ctx, Key: ns + id, Value: &r, TTL: time.Hour,
			Do: func(it *gcache.Item) (any, error) { return e.Select(it.Context(), id) }})
	}
	return []manyReader{
		{"lib GetMany (NewBatch)", getMany(batch), batch.Key},
		{"lib GetMany (New)", getMany(single), single.Key},
		{"go-redis-cache Once×100", func(ctx context.Context, ids []string) error {
			for _, id := range ids {
				if err := once(ctx, id); err != nil {
					return err
				}
			}
			return nil
		}, func(id string) string { return ns + id }},
		{"go-redis-cache Once×100 16-way", func(ctx context.Context, ids []string) error {
			var (
				wg    sync.WaitGroup
				mu    sync.Mutex
				first error
				sem   = make(chan struct{}, 16)
			)
			for _, id := range ids {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					if err := once(ctx, id); err != nil {
						mu.Lock()
						first = err
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			return first
		}, func(id string) string { return ns + id }},
	}
}

func BenchmarkGetMany(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	var ids []string
	for i := 1; i <= manyKeys; i++ {
		ids = append(ids, strconv.Itoa(i))
	}
	for _, miss := range []bool{false, true} {
		kind := "hits"
		if miss {
			kind = "misses"
		}
		for _, r := range manyReaders(b, e) {
			b.Run(kind+"/"+strings.ReplaceAll(r.name, " ", "_"), func(b *testing.B) {
				if err := r.read(ctx, ids); err != nil { // warm
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					if miss {
						b.StopTimer()
						pipe := e.admin.Pipeline()
						for _, id := range ids {
							pipe.Unlink(ctx, r.rkey(id))
						}
						if _, err := pipe.Exec(ctx); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					if err := r.read(ctx, ids); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
