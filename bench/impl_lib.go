package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// libImpl is this library with default options (plus the variant's changes).
type libImpl struct {
	rdb *redis.Client
	l   *cache.Loader[Row]
	env *Env
}

func newLib(variant func(o *cache.Options)) func(c Config) (Impl, error) {
	return func(c Config) (Impl, error) {
		rdb := redis.NewClient(&redis.Options{Addr: c.RedisAddr, ContextTimeoutEnabled: true})
		o := &cache.Options{Prefix: c.Namespace, TTL: c.TTL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if variant != nil {
			variant(o)
		}
		l, err := cache.New(rdb, "r", cache.LoadFunc[Row](c.Load), o)
		if err != nil {
			rdb.Close()
			return nil, err
		}
		return &libImpl{rdb: rdb, l: l, env: c.Env}, nil
	}
}

func (i *libImpl) Get(ctx context.Context, id string) (Row, error) { return i.l.Get(ctx, id) }

func (i *libImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.env, id, val, func(ctx context.Context) error { return i.l.Invalidate(ctx, id) })
}

func (i *libImpl) Close() error {
	err := i.l.Close()
	i.rdb.Close()
	return err
}

// Stats exposes the library's counters for the report.
func (i *libImpl) Stats() cache.Stats { return i.l.Stats() }
