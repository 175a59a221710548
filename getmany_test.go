package cache

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGetMany(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	for i := range 8 {
		tb.put(strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	boom := errors.New("db down")
	tb.hook = func(_ context.Context, k string, _ int64) error {
		if k == "7" {
			return boom
		}
		return nil
	}
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	for i := range 4 { // 0..3 cached
		_, err := l.Get(ctx, strconv.Itoa(i))
		require.NoError(t, err)
	}
	_, err := l.Get(ctx, "missing-cached") // a cached negative entry
	require.ErrorIs(t, err, ErrNotFound)
	loads := tb.loads.Load()
	hits := l.Stats().Hits

	keys := []string{"0", "1", "2", "3", "4", "5", "6", "7", "missing", "missing-cached", "0", "4"}
	got, err := l.GetMany(ctx, keys)
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, `"7"`)
	require.Len(t, got, 7, "found keys, each once; not-found and failed keys absent")
	for i := range 7 {
		require.Equal(t, "v"+strconv.Itoa(i), got[strconv.Itoa(i)].Val)
	}
	require.EqualValues(t, 4, l.Stats().Hits-hits, "the cached keys came from one pipelined read")
	require.EqualValues(t, 5, tb.loads.Load()-loads, "4, 5, 6, 7 and missing loaded; duplicates once")

	got, err = l.GetMany(ctx, []string{"4", "5", "6"})
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.EqualValues(t, 7, l.Stats().Hits-hits)

	_, err = l.GetMany(ctx, []string{"a", ""})
	require.ErrorIs(t, err, ErrEmptyKey)
	got, err = l.GetMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)

	mr.Close() // fail-open: everything from the database
	tb.hook = nil
	got, err = l.GetMany(ctx, []string{"0", "1"})
	require.NoError(t, err)
	require.Len(t, got, 2)
}
