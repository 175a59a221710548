package cache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// A change stream can deliver a commit before other sessions see it: a
// reader that starts after the invalidation may still load the old row.
// The version floor keeps that load out of Redis.
func TestInvalidateVersionsRefusesOlderFills(t *testing.T) {
	onBothRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
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
		require.Equal(t, "2", fields(t, rdb, l.Key("a"))["v"], "the floor stays")
		require.False(t, hasField(t, rdb, l.Key("a"), "p"), "version 1 is not stored below the floor")
		require.False(t, hasField(t, rdb, l.Key("b"), "p"))
		require.NoError(t, l.Set(ctx, "a", row{"v1", 1}), "a Set below the floor turns into an invalidation")
		require.False(t, hasField(t, rdb, l.Key("a"), "p"))

		// Once the commit is visible, the load of version 2 is stored.
		tb.put("a", "v2")
		v, err = l.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, int64(2), v.Ver)
		require.Equal(t, mustJSON(t, row{"v2", 2}), fields(t, rdb, l.Key("a"))["p"])

		// A lower floor never lowers the stored version.
		require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{"a", 1}))
		require.Equal(t, "2", fields(t, rdb, l.Key("a"))["v"])
	})
}

func TestInvalidateVersionsRefusesNegativeVersions(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	err := l.InvalidateVersions(context.Background(), KeyVersion{"a", -1})
	require.True(t, errors.Is(err, ErrNegativeVersion), "%v", err)
}

// A load that read the row before its new version became visible has its
// fill refused by the floor; it must not answer the Gets of its flight
// either — not even one that began after the invalidation — but read the
// row again.
func TestRefusedFillIsNotHandedOut(t *testing.T) {
	_, rdb := fakeRedis(t)
	ctx := context.Background()
	var loads atomic.Int64
	// The first load's snapshot predates the commit of version 2, whose
	// invalidation already left the floor; the next one sees it.
	l, err := New(rdb, "row", func(context.Context, string) (row, error) {
		if loads.Add(1) == 1 {
			return row{"v1", 1}, nil
		}
		return row{"v2", 2}, nil
	}, &Options{Prefix: testenv.Prefix(t, rdb, "cachetest:"), RedisTimeout: testRedisTimeout})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	require.NoError(t, l.InvalidateVersions(ctx, KeyVersion{"a", 2}))
	v, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, int64(2), v.Ver, "the flight read the row again instead of answering with the refused one")
	require.EqualValues(t, 1, l.Stats().StaleSetsPrevented)
	require.EqualValues(t, 2, loads.Load())
	v, err = l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, int64(2), v.Ver)
	require.EqualValues(t, 2, loads.Load(), "cached")
}
