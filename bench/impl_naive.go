package main

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/redis/go-redis/v9"
)

// naiveImpl is the textbook cache-aside: GET; on a miss SELECT and SET EX;
// a write is UPDATE then DEL. A Redis error on GET is returned to the caller
// (no fail-open), as the seeds write it.
type naiveImpl struct {
	rdb *redis.Client
	c   Config
}

func newNaive(c Config) (Impl, error) {
	return &naiveImpl{rdb: newClient(c.RedisAddr), c: c}, nil
}

func (i *naiveImpl) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	b, err := i.rdb.Get(ctx, i.c.Namespace+id).Bytes()
	if err == nil {
		err = json.Unmarshal(b, &r)
		return r, err
	}
	if !errors.Is(err, redis.Nil) {
		return r, err
	}
	r, err = i.c.Load(ctx, id)
	if err != nil {
		return r, err
	}
	b, _ = json.Marshal(r)
	return r, i.rdb.Set(ctx, i.c.Namespace+id, b, i.c.TTL).Err()
}

func (i *naiveImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.c.Env, id, val, func(ctx context.Context) error {
		return i.rdb.Del(ctx, i.c.Namespace+id).Err()
	})
}

func (i *naiveImpl) Close() error { return i.rdb.Close() }
