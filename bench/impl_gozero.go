package main

import (
	"context"
	"errors"

	"github.com/zeromicro/go-zero/core/logx"
	zcache "github.com/zeromicro/go-zero/core/stores/cache"
	zredis "github.com/zeromicro/go-zero/core/stores/redis"
	"github.com/zeromicro/go-zero/core/syncx"
)

func init() { logx.Disable() }

var errZeroNotFound = errors.New("not found")

// goZeroImpl is github.com/zeromicro/go-zero's core/stores/cache node over
// go-zero's own Redis client (it wraps go-redis and adds a breaker), with a
// singleflight barrier, as sqlc.CachedConn builds it. Note: go-zero shares
// one underlying go-redis client per address inside the process, so the
// "separate clients" of the stampede scenario share a pool here.
type goZeroImpl struct {
	c   zcache.Cache
	cfg Config
}

func newGoZero(c Config) (Impl, error) {
	rds, err := zredis.NewRedis(zredis.RedisConf{Host: c.RedisAddr, Type: zredis.NodeType, NonBlock: true})
	if err != nil {
		return nil, err
	}
	node := zcache.NewNode(rds, syncx.NewSingleFlight(), zcache.NewStat("bench"), errZeroNotFound, zcache.WithExpiry(c.TTL))
	return &goZeroImpl{c: node, cfg: c}, nil
}

func (i *goZeroImpl) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	err := i.c.TakeCtx(ctx, &r, i.cfg.Namespace+id, func(v any) error {
		row, err := i.cfg.Load(ctx, id)
		if err != nil {
			return err
		}
		*v.(*Row) = row
		return nil
	})
	return r, err
}

func (i *goZeroImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.cfg.Env, id, val, func(ctx context.Context) error {
		return i.c.DelCtx(ctx, i.cfg.Namespace+id)
	})
}

func (i *goZeroImpl) Close() error { return nil }
