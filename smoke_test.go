package cache

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

type item struct {
	ID  string
	Val string
	Ver int64
}

func (i item) CacheVersion() int64 { return i.Ver }

func TestSmoke(t *testing.T) {
	for _, tc := range []struct {
		name string
		rdb  func(t *testing.T) redis.UniversalClient
	}{
		{"miniredis", func(t *testing.T) redis.UniversalClient { _, r := fakeRedis(t); return r }},
		{"redis", func(t *testing.T) redis.UniversalClient { return testenv.Redis(t, "") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := tc.rdb(t)
			var loads atomic.Int64
			l, err := New(rdb, "item", func(ctx context.Context, k string) (item, error) {
				loads.Add(1)
				if k == "missing" {
					return item{}, ErrNotFound
				}
				return item{ID: k, Val: "v", Ver: 3}, nil
			}, &Options{Prefix: testenv.Prefix(t, rdb, "cachetest:"), RedisTimeout: testRedisTimeout}) // counts loads: no fail-open on a busy machine
			require.NoError(t, err)
			defer l.Close()
			ctx := context.Background()
			v, err := l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, item{"a", "v", 3}, v)
			v, err = l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, item{"a", "v", 3}, v)
			require.EqualValues(t, 1, loads.Load())
			_, err = l.Get(ctx, "missing")
			require.ErrorIs(t, err, ErrNotFound)
			_, err = l.Get(ctx, "missing")
			require.ErrorIs(t, err, ErrNotFound)
			require.EqualValues(t, 2, loads.Load())
			require.NoError(t, l.Invalidate(ctx, "a"))
			_, err = l.Get(ctx, "a")
			require.NoError(t, err)
			require.EqualValues(t, 3, loads.Load())
			require.NoError(t, l.Set(ctx, "a", item{"a", "new", 5}))
			v, _ = l.Get(ctx, "a")
			require.Equal(t, "new", v.Val)
			require.NoError(t, l.Set(ctx, "a", item{"a", "old", 4}))
			_, _ = l.Get(ctx, "a") // the database's version 3 is older than the 5 kept: read again once
			require.EqualValues(t, 5, loads.Load())
			t.Logf("%+v", l.Stats())
			t.Log(fields(t, rdb, l.Key("a")))
		})
	}
}
