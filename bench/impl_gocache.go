package main

import (
	"context"
	"encoding/json"
	"fmt"

	gocache "github.com/eko/gocache/lib/v4/cache"
	"github.com/eko/gocache/lib/v4/store"
	redisstore "github.com/eko/gocache/store/redis/v4"
	"github.com/redis/go-redis/v9"
)

// gocacheImpl is github.com/eko/gocache/lib/v4's LoadableCache over its
// Redis store (store/redis/v4), values JSON strings. The loadable cache
// writes loaded values asynchronously (a setter goroutine).
type gocacheImpl struct {
	rdb *redis.Client
	lc  *gocache.LoadableCache[string]
	cfg Config
}

func newGocache(c Config) (Impl, error) {
	rdb := newClient(c.RedisAddr)
	st := redisstore.NewRedis(rdb, store.WithExpiration(c.TTL))
	cm := gocache.New[string](st)
	lc := gocache.NewLoadable[string](func(ctx context.Context, key any) (string, []store.Option, error) {
		k := key.(string)
		r, err := c.Load(ctx, k[len(c.Namespace):])
		if err != nil {
			return "", nil, err
		}
		b, err := json.Marshal(r)
		return string(b), nil, err
	}, cm)
	return &gocacheImpl{rdb: rdb, lc: lc, cfg: c}, nil
}

func (i *gocacheImpl) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	s, err := i.lc.Get(ctx, i.cfg.Namespace+id)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		return r, fmt.Errorf("decode %q: %w", s, err)
	}
	return r, nil
}

func (i *gocacheImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.cfg.Env, id, val, func(ctx context.Context) error {
		return i.lc.Delete(ctx, i.cfg.Namespace+id)
	})
}

func (i *gocacheImpl) Close() error {
	err := i.lc.Close()
	i.rdb.Close()
	return err
}
