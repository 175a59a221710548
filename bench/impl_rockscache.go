package main

import (
	"context"
	"encoding/json"

	"github.com/dtm-labs/rockscache"
	"github.com/redis/go-redis/v9"
)

// rocksImpl is github.com/dtm-labs/rockscache with NewDefaultOptions
// (weak), or StrongConsistency on (strong); writes call TagAsDeleted.
type rocksImpl struct {
	rdb *redis.Client
	rc  *rockscache.Client
	cfg Config
}

func newRocks(strong bool) func(c Config) (Impl, error) {
	return func(c Config) (Impl, error) {
		rdb := newClient(c.RedisAddr)
		o := rockscache.NewDefaultOptions()
		o.StrongConsistency = strong
		return &rocksImpl{rdb: rdb, rc: rockscache.NewClient(rdb, o), cfg: c}, nil
	}
}

func (i *rocksImpl) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	s, err := i.rc.Fetch2(ctx, i.cfg.Namespace+id, i.cfg.TTL, func() (string, error) {
		r, err := i.cfg.Load(ctx, id)
		if err != nil {
			return "", err
		}
		b, err := json.Marshal(r)
		return string(b), err
	})
	if err != nil {
		return r, err
	}
	err = json.Unmarshal([]byte(s), &r)
	return r, err
}

func (i *rocksImpl) Write(ctx context.Context, id, val string) (int64, error) {
	return writeThen(ctx, i.cfg.Env, id, val, func(ctx context.Context) error {
		return i.rc.TagAsDeleted2(ctx, i.cfg.Namespace+id)
	})
}

func (i *rocksImpl) Close() error { return i.rdb.Close() }
