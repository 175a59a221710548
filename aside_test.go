package cache

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/stretchr/testify/require"
)

func TestGetHitAndMiss(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "one")
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()

	for i, want := range []Stats{
		{Misses: 1, Loads: 1},
		{Misses: 1, Loads: 1, Hits: 1},
		{Misses: 1, Loads: 1, Hits: 2},
	} {
		v, err := l.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, row{"one", 1}, v)
		require.Equal(t, want, l.Stats(), "Get #%d", i+1)
	}
	h := fields(t, rdb, l.Key("a"))
	require.Equal(t, `{"val":"one","ver":1}`, h["p"])
	require.Equal(t, "1", h["v"])
	require.NotContains(t, h, "lo", "the fill clears the lease")
}

func TestNegativeCache(t *testing.T) {
	for _, tc := range []struct {
		name    string
		loadErr error
		disable bool
		loads   int64
	}{
		{"ErrNotFound", ErrNotFound, false, 1},
		{"wrapped sql.ErrNoRows", fmt.Errorf("select: %w", sql.ErrNoRows), false, 1},
		{"disabled", ErrNotFound, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr, rdb := fakeRedis(t)
			tb := newTable()
			tb.hook = func(context.Context, string, int64) error { return tc.loadErr }
			l := newLoader(t, rdb, tb, &Options{NegativeTTL: 10 * time.Second, DisableNegativeCache: tc.disable})
			for range 3 {
				_, err := l.Get(context.Background(), "nope")
				require.ErrorIs(t, err, ErrNotFound)
			}
			require.Equal(t, tc.loads, tb.loads.Load())
			if !tc.disable {
				require.EqualValues(t, 2, l.Stats().NegativeHits)
				ttl := mr.TTL(l.Key("nope"))
				require.InDelta(t, 10*time.Second, ttl, float64(time.Second), "NegativeTTL with 10%% jitter")
				// The negative entry expires like any other.
				mr.FastForward(12 * time.Second)
				_, err := l.Get(context.Background(), "nope")
				require.ErrorIs(t, err, ErrNotFound)
				require.Equal(t, tc.loads+1, tb.loads.Load())
			}
		})
	}
}

func TestLoadErrorNotCached(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "one")
	boom := errors.New("db down")
	tb.hook = func(_ context.Context, _ string, n int64) error {
		if n == 1 {
			return boom
		}
		return nil
	}
	l := newLoader(t, rdb, tb, nil)
	_, err := l.Get(context.Background(), "a")
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, `cache: load row "a"`)
	require.EqualValues(t, 1, l.Stats().LoadErrors)
	require.NotContains(t, fields(t, rdb, l.Key("a")), "lo",
		"a failed load releases its lease so waiters do not wait for it")

	v, err := l.Get(context.Background(), "a")
	require.NoError(t, err, "the failure was not cached")
	require.Equal(t, "one", v.Val)
}

func TestShortTTL(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("flag", "on")
	l := newLoader(t, rdb, tb, &Options{TTL: time.Second, DisableJitter: true})
	ctx := context.Background()
	_, err := l.Get(ctx, "flag")
	require.NoError(t, err)
	require.Equal(t, time.Second, mr.TTL(l.Key("flag")), "a 1s TTL is kept as it is")
	_, _ = l.Get(ctx, "flag")
	require.EqualValues(t, 1, tb.loads.Load())

	mr.FastForward(1001 * time.Millisecond)
	tb.put("flag", "off")
	v, err := l.Get(ctx, "flag")
	require.NoError(t, err)
	require.Equal(t, "off", v.Val)
	require.EqualValues(t, 2, tb.loads.Load())

	// A tombstone outlives a short TTL: it must cover any fill in flight.
	require.NoError(t, l.Invalidate(ctx, "flag"))
	require.Equal(t, l.s.tombstoneTTL, mr.TTL(l.Key("flag")))
}

func TestTTLJitterSpreadsEntries(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, &Options{TTL: 100 * time.Second, Jitter: 0.2})
	seen := map[time.Duration]bool{}
	for i := range 50 {
		k := fmt.Sprint(i)
		tb.put(k, "x")
		_, err := l.Get(context.Background(), k)
		require.NoError(t, err)
		ttl := mr.TTL(l.Key(k))
		require.GreaterOrEqual(t, ttl, 80*time.Second)
		require.LessOrEqual(t, ttl, 120*time.Second)
		seen[ttl] = true
	}
	require.Greater(t, len(seen), 25, "TTLs are jittered")
}

// Every kind of corruption of every part of an entry is a miss, counted,
// and heals with one load: the next Get is a hit.
func TestCorruptEntryIsAMiss(t *testing.T) {
	good := entry.Header(entry.FlagPayload, 5, 1, 0, 0, 0, "")
	// garble replaces the header's bytes at [at, at+len(with)).
	garble := func(at int, with string) string { return good[:at] + with + good[at+len(with):] }
	plants := map[string]func(ctx context.Context, l *Loader[row]){
		"undecodable payload": func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), good, "{not json")
		},
		"not a hash nor an entry": func(ctx context.Context, l *Loader[row]) {
			l.rdb.Set(ctx, l.Key("a"), "garbage", 0)
		},
		"a hash": func(ctx context.Context, l *Loader[row]) {
			l.rdb.HSet(ctx, l.Key("a"), "p", `{"val":"x","ver":1}`, "g", "5")
		},
		"a list": func(ctx context.Context, l *Loader[row]) {
			l.rdb.RPush(ctx, l.Key("a"), "x")
		},
		"truncated header": func(ctx context.Context, l *Loader[row]) {
			l.rdb.Set(ctx, l.Key("a"), good[:50], 0)
		},
		"payload without its flag": func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), entry.Header(0, 5, 1, 0, 0, 0, ""), `{"val":"x","ver":1}`)
		},
		"negative entry with a payload": func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), entry.Header(entry.FlagNegative|entry.FlagPayload, 5, 1, 0, 0, 0, ""), `{}`)
		},
		"zero generation": func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), entry.Header(entry.FlagPayload, 0, 1, 0, 0, 0, ""), `{"val":"x","ver":1}`)
		},
		"larger than MaxValueBytes": func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), good, `{"val":"`+strings.Repeat("x", 2000)+`","ver":1}`)
		},
	}
	// Garbage in each field of the header.
	for name, at := range map[string]int{
		"magic": 0, "flags": 2, "generation": 3, "version": 19, "soft expiry": 38,
		"load duration": 51, "lease deadline": 59,
	} {
		plants["garbage "+name] = func(ctx context.Context, l *Loader[row]) {
			putEntry(t, l.rdb, l.Key("a"), garble(at, "x"), `{"val":"x","ver":1}`)
		}
	}
	for name, plant := range plants {
		t.Run(name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			tb := newTable()
			tb.put("a", "good")
			l := newLoader(t, rdb, tb, &Options{MaxValueBytes: 1000})
			ctx := context.Background()
			plant(ctx, l)

			v, err := l.Get(ctx, "a")
			require.NoError(t, err, "a corrupt entry is never an error")
			require.Equal(t, row{"good", 1}, v)
			require.EqualValues(t, 1, l.Stats().CorruptEntries)
			require.EqualValues(t, 0, l.Stats().RedisErrors)

			// Replaced: the next Gets are hits.
			for range 3 {
				v, err = l.Get(ctx, "a")
				require.NoError(t, err)
				require.Equal(t, row{"good", 1}, v)
			}
			require.EqualValues(t, 1, tb.loads.Load(), "one load heals it")
			require.EqualValues(t, 3, l.Stats().Hits)
		})
	}
}

func TestOversizeNotCached(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("big", strings.Repeat("x", 100))
	l := newLoader(t, rdb, tb, &Options{MaxValueBytes: 64})
	ctx := context.Background()
	for range 2 {
		v, err := l.Get(ctx, "big")
		require.NoError(t, err)
		require.Len(t, v.Val, 100)
		require.False(t, hasField(t, rdb, l.Key("big"), "p"), "an oversize value is not cached")
	}
	// Each Get loads, unless the second joined the first's flight while
	// that was releasing its lease (after answering, when its budget was
	// spent): then the two share one load.
	require.Equal(t, uint64(tb.loads.Load()), l.Stats().Oversize, "every load of it counted as oversize")
	require.EqualValues(t, 0, l.Stats().Hits)

	// Set of an oversize value invalidates what was there.
	tb.put("small", "s")
	_, _ = l.Get(ctx, "small")
	require.NoError(t, l.Set(ctx, "small", row{strings.Repeat("y", 100), 2}))
	require.Equal(t, "2", fields(t, rdb, l.Key("small"))["f"], "tombstone")
}

func TestEmptyKey(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "")
	require.ErrorIs(t, err, ErrEmptyKey)
	require.ErrorIs(t, l.Set(ctx, "", row{}), ErrEmptyKey)
	require.ErrorIs(t, l.Invalidate(ctx, "a", ""), ErrEmptyKey)
	_, err = l.WriteThrough(ctx, "", func(context.Context) (row, error) { panic("must not run") })
	require.ErrorIs(t, err, ErrEmptyKey)
}

func TestClosed(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	require.NoError(t, l.Close())
	require.NoError(t, l.Close(), "Close is idempotent")
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, l.Set(ctx, "a", row{}), ErrClosed)
	require.ErrorIs(t, l.Invalidate(ctx, "a"), ErrClosed)
}

func TestRedisDownFailsOpen(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "one")
	l := newLoader(t, rdb, tb, nil)
	mr.Close()
	v, err := l.Get(context.Background(), "a")
	require.NoError(t, err, "Get answers from the database when Redis is gone")
	require.Equal(t, "one", v.Val)
	require.NotZero(t, l.Stats().RedisErrors)
	require.Error(t, l.Invalidate(context.Background(), "a"), "Invalidate reports that Redis is gone")
}

func TestVersionedFillNeverGoesBack(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	tb.put("a", "v1")
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	// A writer stored version 5; the database (wrongly) still says 1.
	require.NoError(t, l.Set(ctx, "a", row{"v5", 5}))
	require.NoError(t, l.Invalidate(ctx, "a"))
	v, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "v1", v.Val, "the caller gets what the database said")
	// Each refused fill sends the flight back to the database (the row it
	// read is older than a completed write), a bounded number of times.
	require.EqualValues(t, 1+maxOlderRereads, l.Stats().StaleSetsPrevented, "but the older version is not stored")
	require.EqualValues(t, 1+maxOlderRereads, tb.loads.Load())
	require.Equal(t, "5", fields(t, rdb, l.Key("a"))["v"])
	require.False(t, hasField(t, rdb, l.Key("a"), "p"))
}

func TestNegativeVersionNotCached(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	require.ErrorIs(t, l.Set(ctx, "a", row{"x", -1}), ErrNegativeVersion)
	require.EqualValues(t, 1, l.Stats().EncodeErrors)
}

// ptrRow implements Versioned on the pointer: *T is Versioned.
type ptrRow struct{ V int64 }

func (p *ptrRow) CacheVersion() int64 { return p.V }

func TestVersionOf(t *testing.T) {
	v, err := versionOf(row{Ver: 7})
	require.NoError(t, err)
	require.EqualValues(t, 7, v)
	v, err = versionOf(ptrRow{V: 8})
	require.NoError(t, err)
	require.EqualValues(t, 8, v, "*T implementing Versioned counts")
	v, err = versionOf[*ptrRow](nil)
	require.NoError(t, err)
	require.Zero(t, v, "a nil pointer has no version")
	v, err = versionOf("plain")
	require.NoError(t, err)
	require.Zero(t, v)
}
