package cache

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSetVersions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stored    int64
		set       int64
		wantVal   string
		prevented uint64
	}{
		{"newer replaces", 3, 4, "set", 0},
		{"equal replaces (idempotent retry)", 3, 3, "set", 0},
		{"older invalidates", 3, 2, "", 1},
		{"unversioned always stores", 0, 0, "set", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			l := newLoader(t, rdb, newTable(), nil)
			ctx := context.Background()
			require.NoError(t, l.Set(ctx, "a", row{"stored", tc.stored}))
			require.NoError(t, l.Set(ctx, "a", row{"set", tc.set}))
			h := fields(t, rdb, l.Key("a"))
			if tc.wantVal == "" {
				require.NotContains(t, h, "p")
				require.Equal(t, "2", h["f"], "a refused Set leaves a tombstone")
			} else {
				require.Contains(t, h["p"], `"val":"set"`)
			}
			require.Equal(t, tc.prevented, l.Stats().StaleSetsPrevented)
		})
	}
}

func TestSetVoidsLease(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb, started, release := blockingTable()
	tb.put("a", "old")
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	done := make(chan struct{})
	go func() { l.Get(ctx, "a"); close(done) }()
	<-started
	// Unversioned values are protected by the lease alone: use version 0.
	require.NoError(t, l.Set(ctx, "a", row{"written", 0}))
	close(release)
	<-done
	require.Contains(t, fields(t, rdb, l.Key("a"))["p"], "written")
	require.EqualValues(t, 1, l.Stats().StaleSetsPrevented)
}

func TestInvalidateAbsentKeyWritesTombstone(t *testing.T) {
	mr, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	ctx := context.Background()
	require.NoError(t, l.Invalidate(ctx, "a", "b", "c"))
	for _, k := range []string{"a", "b", "c"} {
		require.Equal(t, "2", fields(t, rdb, l.Key(k))["f"])
		require.Equal(t, l.s.tombstoneTTL, mr.TTL(l.Key(k)))
	}
	g1, _ := strconv.ParseInt(fields(t, rdb, l.Key("a"))["g"], 10, 64)
	require.NoError(t, l.Invalidate(ctx, "a"))
	g2, _ := strconv.ParseInt(fields(t, rdb, l.Key("a"))["g"], 10, 64)
	require.Greater(t, g2, g1, "every invalidation bumps the generation")
	require.NoError(t, l.Invalidate(ctx), "no keys, nothing to do")
}

func TestInvalidateReloadsScriptsAfterFlush(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	ctx := context.Background()
	require.NoError(t, l.Invalidate(ctx, "a", "b"))
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	require.NoError(t, l.Invalidate(ctx, "a", "b"), "a pipeline falls back to EVAL on NOSCRIPT")
}

func TestWriteThrough(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "v1")
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)

	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "v2"), nil })
	require.NoError(t, err)
	require.Equal(t, row{"v2", 2}, v)
	got, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, row{"v2", 2}, got)
	require.EqualValues(t, 1, tb.loads.Load(), "the written value was cached, no load")
}

func TestWriteThroughWriteFails(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	boom := errors.New("constraint violation")
	_, err := l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return row{}, boom })
	require.ErrorIs(t, err, boom)
	require.Zero(t, rdb.Exists(context.Background(), l.Key("a")).Val(), "Redis is not touched")
}

func TestWriteThroughRedisFailsAfterCommit(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "v1")
	ev := &events{}
	retried := ev.on(EventInvalidationRetried)
	l := newLoader(t, rdb, tb, &Options{Recorder: ev})
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)

	mr.Close()
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) { return tb.put("a", "v2"), nil })
	require.NoError(t, err, "the commit happened: no error")
	require.Equal(t, "v2", v.Val)
	require.EqualValues(t, 1, l.Stats().InvalidationsQueued)

	require.NoError(t, mr.Restart()) // Redis is back with the old entry
	wait(t, retried, "the queued invalidation")
	got, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "v2", got.Val, "no stale entry remains")
}

func TestWriteThroughCallerCancelsAfterCommit(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	v, err := l.WriteThrough(ctx, "a", func(context.Context) (row, error) {
		r := tb.put("a", "v1")
		cancel() // the caller gives up right after the commit
		return r, nil
	})
	require.NoError(t, err)
	require.Equal(t, "v1", v.Val)
	require.Contains(t, fields(t, rdb, l.Key("a"))["p"], "v1",
		"the value still reached Redis")
}

func TestCloseGivesQueuedInvalidationsOneLastTry(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	ev := &events{}
	dropped := ev.on(EventInvalidationDropped)
	l := newLoader(t, rdb, tb, &Options{Recorder: ev})
	mr.Close()
	_, err := l.WriteThrough(context.Background(), "a", func(context.Context) (row, error) { return tb.put("a", "x"), nil })
	require.NoError(t, err)
	require.NoError(t, l.Close())
	wait(t, dropped, "the drop on Close")
	s := l.Stats()
	require.EqualValues(t, 1, s.InvalidationsQueued)
	require.EqualValues(t, 1, s.InvalidationsDropped)
}
