package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
)

func TestStaleWhileRevalidate(t *testing.T) {
	const (
		ttl      = time.Minute
		maxStale = time.Minute
	)
	for _, tc := range []struct {
		name  string
		age   func(t *testing.T, mr *miniredis.Miniredis, l *Loader[row])
		stale bool // served stale while a refresh loads
	}{
		{"expired within MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - 5000 })
		}, true},
		{"invalidated", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			require.NoError(t, l.Invalidate(context.Background(), "a"))
			h := fields(t, l.rdb, l.Key("a"))
			require.Contains(t, h, entry.Payload, "Invalidate keeps the payload for stale serving")
			require.Equal(t, "2", h["f"])
		}, true},
		{"expired beyond MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - maxStale.Milliseconds() - 5000 })
		}, false},
		{"invalidated beyond MaxStale", func(t *testing.T, _ *miniredis.Miniredis, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - maxStale.Milliseconds() - 5000 })
			require.NoError(t, l.Invalidate(context.Background(), "a"))
		}, false},
		{"gone from Redis", func(t *testing.T, mr *miniredis.Miniredis, _ *Loader[row]) {
			mr.FastForward(ttl + maxStale + time.Second)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr, rdb := fakeRedis(t)
			fills := watchCmd(rdb, "fill")
			tb := newTable()
			started := make(chan int64, 16)
			release := make(chan struct{})
			tb.hook = func(_ context.Context, _ string, n int64) error {
				if tc.stale {
					started <- n
					<-release
				}
				return nil
			}
			ev := &events{}
			refreshed := ev.on(EventRefresh)
			l := newLoader(t, rdb, tb, &Options{TTL: ttl, DisableJitter: true, StaleWhileRevalidate: true,
				MaxStale: maxStale, RedisTimeout: relaxedTimeout, Recorder: ev})
			seedRow(t, l, "a", tb.put("a", "a1"))
			require.Equal(t, ttl+maxStale, mr.TTL(l.Key("a")), "kept MaxStale past its TTL")
			tb.put("a", "a2")
			tc.age(t, mr, l)

			if !tc.stale {
				require.Equal(t, "a2", getRow(t, l, "a").Val, "not served: loaded")
				s := l.Stats()
				require.Zero(t, s.Stale)
				require.Zero(t, s.Refreshes)
				require.EqualValues(t, 1, s.Misses)
				return
			}
			// Served at once while the refresh's load is held.
			require.Equal(t, "a1", getRow(t, l, "a").Val)
			wait(t, refreshed, "the refresh")
			require.EqualValues(t, 1, <-started)
			require.Equal(t, "a1", getRow(t, l, "a").Val, "stale again while the refresh runs")
			s := l.Stats()
			require.EqualValues(t, 2, s.Stale)
			require.EqualValues(t, 1, s.Refreshes, "one refresh")
			require.Zero(t, s.Misses)
			require.Zero(t, s.Hits)

			close(release)
			require.Equal(t, l.Key("a"), waitKey(t, fills, "the refresh's fill"))
			require.Equal(t, "a2", getRow(t, l, "a").Val)
			s = l.Stats()
			require.EqualValues(t, 1, s.Hits, "refilled")
			require.EqualValues(t, 1, tb.loads.Load())
			require.NotContains(t, fields(t, rdb, l.Key("a")), "f")
		})
	}
}

func TestInvalidatedNotServedWithoutSWR(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		keeps bool // Invalidate keeps the payload
	}{
		{"no stale serving", Options{}, false},
		{"MaxStale alone", Options{MaxStale: time.Minute}, false},
		{"StaleIfError only", Options{StaleIfError: true, MaxStale: time.Minute}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			fills := watchCmd(rdb, "fill")
			tb := newTable()
			tb.put("a", "a1")
			opts := tc.opts
			opts.RedisTimeout = relaxedTimeout
			l := newLoader(t, rdb, tb, &opts)
			ctx := context.Background()
			require.Equal(t, "a1", getRow(t, l, "a").Val)
			waitKey(t, fills, "the fill")
			tb.put("a", "a2")
			require.NoError(t, l.Invalidate(ctx, "a"))
			require.Equal(t, tc.keeps, hasField(t, rdb, l.Key("a"), "p"))
			require.Equal(t, "a2", getRow(t, l, "a").Val)
			s := l.Stats()
			require.Zero(t, s.Stale)
			require.Zero(t, s.Refreshes)
			require.EqualValues(t, 2, s.Misses)
		})
	}
	t.Run("payload kept by another process", func(t *testing.T) {
		mr, rdb := fakeRedis(t)
		tb := newTable()
		tb.put("a", "a1")
		swr := newLoader(t, rdb, tb, &Options{StaleWhileRevalidate: true, MaxStale: time.Minute, RedisTimeout: relaxedTimeout})
		plain := newLoader(t, newClient(t, mr.Addr()), tb, &Options{Prefix: swr.s.prefix, RedisTimeout: relaxedTimeout})
		ctx := context.Background()
		require.Equal(t, "a1", getRow(t, swr, "a").Val)
		tb.put("a", "a2")
		require.NoError(t, swr.Invalidate(ctx, "a"))
		require.True(t, hasField(t, rdb, swr.Key("a"), "p"))
		require.Equal(t, "a2", getRow(t, plain, "a").Val)
		require.Zero(t, plain.Stats().Stale)
	})
}

func TestStaleIfError(t *testing.T) {
	const maxStale = time.Minute
	boom := errors.New("database down")
	sie := Options{StaleIfError: true, MaxStale: maxStale}
	expire := func(by time.Duration) func(t *testing.T, l *Loader[row]) {
		return func(t *testing.T, l *Loader[row]) {
			editEntry(t, l.rdb, l.Key("a"), func(e *entry.Entry) { e.SoftExpiry = l.clock.serverNow() - by.Milliseconds() })
		}
	}
	invalidate := func(t *testing.T, l *Loader[row]) {
		require.NoError(t, l.Invalidate(context.Background(), "a"))
	}
	for _, tc := range []struct {
		name    string
		opts    Options
		age     func(t *testing.T, l *Loader[row])
		loadErr error
		stale   bool  // Get answers a1 without error
		wantErr error // otherwise
	}{
		{"expired", sie, expire(5 * time.Second), boom, true, nil},
		{"invalidated", sie, invalidate, boom, true, nil},
		{"not found is not masked", sie, expire(5 * time.Second), ErrNotFound, false, ErrNotFound},
		{"invalidated, not found is not masked", sie, invalidate, ErrNotFound, false, ErrNotFound},
		{"beyond MaxStale", sie, expire(maxStale + 5*time.Second), boom, false, boom},
		{"without StaleIfError", Options{}, expire(5 * time.Second), boom, false, boom},
		{"without StaleIfError, invalidated", Options{}, invalidate, boom, false, boom},
		{"StaleWhileRevalidate alone, load fails", Options{StaleWhileRevalidate: true, MaxStale: maxStale},
			expire(maxStale + 5*time.Second), boom, false, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			tb := newTable()
			tb.hook = func(context.Context, string, int64) error { return tc.loadErr }
			opts := tc.opts
			opts.TTL = time.Minute
			opts.RedisTimeout = relaxedTimeout
			l := newLoader(t, rdb, tb, &opts)
			ctx := context.Background()
			seedRow(t, l, "a", tb.put("a", "a1"))
			tc.age(t, l)

			v, err := l.Get(ctx, "a")
			s := l.Stats()
			require.EqualValues(t, 1, tb.loads.Load(), "the load was tried")
			if tc.stale {
				require.NoError(t, err)
				require.Equal(t, row{"a1", 1}, v)
				require.EqualValues(t, 1, s.Stale)
				require.EqualValues(t, 1, s.LoadErrors)
				h := fields(t, rdb, l.Key("a"))
				require.Equal(t, mustJSON(t, row{"a1", 1}), h["p"], "the failure is not cached")
				require.NotContains(t, h, entry.LeaseOwner, "the lease is released")
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.Zero(t, s.Stale)
			if errors.Is(tc.wantErr, ErrNotFound) {
				_, err = l.Get(ctx, "a")
				require.ErrorIs(t, err, ErrNotFound, "the row is gone: a negative entry")
				require.EqualValues(t, 1, l.Stats().NegativeHits)
			}
		})
	}
}
