package main

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// sturdycImpl is github.com/viccon/sturdyc (an in-memory cache with request
// coalescing) with a Redis-backed DistributedStorage, as its README's
// distributed-storage section builds it. A write deletes the key locally and
// in Redis; other instances' in-memory copies live until their TTL.
type sturdycImpl struct {
	rdb *redis.Client
	c   *sturdyc.Client[Row]
	st  *sturdyRedis
	cfg Config
}

// sturdyRedis implements sturdyc.DistributedStorageWithDeletions on Redis.
type sturdyRedis struct {
	rdb *redis.Client
	ns  string
	ttl time.Duration
}

func (s *sturdyRedis) Get(ctx context.Context, key string) ([]byte, bool) {
	b, err := s.rdb.Get(ctx, s.ns+key).Bytes()
	return b, err == nil
}

func (s *sturdyRedis) Set(ctx context.Context, key string, value []byte) {
	s.rdb.Set(ctx, s.ns+key, value, s.ttl)
}

func (s *sturdyRedis) GetBatch(ctx context.Context, keys []string) map[string][]byte {
	m := map[string][]byte{}
	for _, k := range keys {
		if b, ok := s.Get(ctx, k); ok {
			m[k] = b
		}
	}
	return m
}

func (s *sturdyRedis) SetBatch(ctx context.Context, records map[string][]byte) {
	for k, v := range records {
		s.Set(ctx, k, v)
	}
}

func (s *sturdyRedis) Delete(ctx context.Context, key string) { s.rdb.Del(ctx, s.ns+key) }

func (s *sturdyRedis) DeleteBatch(ctx context.Context, keys []string) {
	for _, k := range keys {
		s.Delete(ctx, k)
	}
}

func newSturdyc(c Config) (Impl, error) {
	rdb := newClient(c.RedisAddr)
	st := &sturdyRedis{rdb: rdb, ns: c.Namespace, ttl: c.TTL}
	cl := sturdyc.New[Row](10000, 10, c.TTL, 10, sturdyc.WithDistributedStorage(st))
	return &sturdycImpl{rdb: rdb, c: cl, st: st, cfg: c}, nil
}

func (i *sturdycImpl) Get(ctx context.Context, id string) (Row, error) {
	return i.c.GetOrFetch(ctx, id, func(ctx context.Context) (Row, error) { return i.cfg.Load(ctx, id) })
}

func (i *sturdycImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.cfg.Env, id, val, func(ctx context.Context) error {
		i.c.Delete(id)
		i.st.Delete(ctx, id)
		return nil
	})
}

func (i *sturdycImpl) Close() error { return i.rdb.Close() }
