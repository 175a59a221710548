package cache

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// A change stream can deliver a commit before other sessions see it: a
// reader that starts after the invalidation may still load the old row.
// The version floor keeps that load out of Redis.
func TestInvalidateVersionsRefusesOlderFills(t *testing.T) {
	for name, rdb := range map[string]func(t *testing.T) redis.UniversalClient{
		"miniredis": func(t *testing.T) redis.UniversalClient { _, c := fakeRedis(t); return c },
		"redis":     func(t *testing.T) redis.UniversalClient { return realRedis(t) },
	} {
		t.Run(name, func(t *testing.T) {
			rdb := rdb(t)
			ctx := context.Background()
			tb := newTable()
			tb.put("a", "v1")
			tb.put("b", "v1")
			l := newLoader(t, rdb, tb, nil)
			_, err := l.Get(ctx, "a")
			require.NoError(t, err)

			// Version 2 committed; the reader's session still sees version 1.
			require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{"a", 2}, KeyVersion{"b", 2}))
			v, err := l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, int64(1), v.Ver, "the caller gets what its database session said")
			require.Equal(t, "2", rdb.HGet(ctx, l.Key("a"), "v").Val(), "the floor stays")
			require.False(t, rdb.HExists(ctx, l.Key("a"), "p").Val(), "version 1 is not stored below the floor")
			require.False(t, rdb.HExists(ctx, l.Key("b"), "p").Val())
			require.NoError(t, l.Set(ctx, "a", row{"v1", 1}), "a Set below the floor turns into an invalidation")
			require.False(t, rdb.HExists(ctx, l.Key("a"), "p").Val())

			// Once the commit is visible, the load of version 2 is stored.
			tb.put("a", "v2")
			v, err = l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, int64(2), v.Ver)
			require.Equal(t, mustJSON(t, row{"v2", 2}), rdb.HGet(ctx, l.Key("a"), "p").Val())

			// A lower floor never lowers the stored version.
			require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{"a", 1}))
			require.Equal(t, "2", rdb.HGet(ctx, l.Key("a"), "v").Val())
		})
	}
}

func TestInvalidateVersionsRefusesNegativeVersions(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	err := l.InvalidateVersions(context.Background(), KeyVersion{"a", -1})
	require.True(t, errors.Is(err, ErrNegativeVersion), "%v", err)
}
