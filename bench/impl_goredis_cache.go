package main

import (
	"context"
	"time"

	gcache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
)

// goRedisCacheImpl is github.com/go-redis/cache/v9 as its README builds it:
// Once (singleflight over GET / load / SET) with a TinyLFU local cache in
// front (README: NewTinyLFU(1000, time.Minute); here the local TTL is capped
// at the scenario's TTL). local=false runs it over Redis alone.
type goRedisCacheImpl struct {
	rdb *redis.Client
	c   *gcache.Cache
	cfg Config
}

func newGoRedisCache(local bool) func(c Config) (Impl, error) {
	return func(c Config) (Impl, error) {
		rdb := newClient(c.RedisAddr)
		o := &gcache.Options{Redis: rdb}
		if local {
			o.LocalCache = gcache.NewTinyLFU(1000, min(time.Minute, c.TTL))
		}
		return &goRedisCacheImpl{rdb: rdb, c: gcache.New(o), cfg: c}, nil
	}
}

func (i *goRedisCacheImpl) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	err := i.c.Once(&gcache.Item{
		Ctx:   ctx,
		Key:   i.cfg.Namespace + id,
		Value: &r,
		TTL:   i.cfg.TTL,
		Do: func(it *gcache.Item) (any, error) {
			return i.cfg.Load(it.Context(), id)
		},
	})
	return r, err
}

func (i *goRedisCacheImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.cfg.Env, id, val, func(ctx context.Context) error {
		err := i.c.Delete(ctx, i.cfg.Namespace+id)
		if err == gcache.ErrCacheMiss {
			err = nil
		}
		return err
	})
}

func (i *goRedisCacheImpl) Close() error { return i.rdb.Close() }
