package cache

import (
	"context"
	"database/sql"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// Regression tests for promises that single faults once broke: each names
// the fault and asserts the promise, not a timing.

// A LoadFunc that panics on a background goroutine — a sampled check, a
// Reconcile pass — must not crash the process: every call of user code goes
// through the one guard.
func TestPanickingLoadFuncOffTheRequestPath(t *testing.T) {
	_, rdb := fakeRedis(t)
	var panicking atomic.Bool
	tb := newTable()
	tb.put("a", "a1")
	tb.hook = func(context.Context, string, int64) error {
		if panicking.Load() {
			panic("boom")
		}
		return nil
	}
	l := newLoader(t, rdb, tb, &Options{SampleRate: 1, SampleDelay: time.Millisecond})
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	panicking.Store(true)
	_, err = l.Get(ctx, "a") // a hit, sampled: the check's load panics
	require.NoError(t, err)
	require.Eventually(t, func() bool { return l.Stats().LoadErrors == 1 }, 10*time.Second, time.Millisecond,
		"the sampled check's load panicked, and was counted as a failed load")
	require.Zero(t, l.Stats().Inconsistent, "a check whose load failed judges nothing")

	res, err := l.Reconcile(ctx, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.Errors, "Reconcile counts the panicking load as an error")
	require.Zero(t, res.Evicted)

	_, err = l.WriteThrough(ctx, "b", func(context.Context) (row, error) { panic("write") })
	var pe *PanicError
	require.ErrorAs(t, err, &pe, "a panicking write function is an error, as a panicking load is")
	require.Equal(t, "cache: panic: write", pe.Error(), "one line; the stack is in Stack")
	require.NotEmpty(t, pe.Stack)
}

// Errors name what failed, and the same rule holds on every path.
func TestErrorsNameLoaderAndKey(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "missing")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), `row "missing"`)
	_, err = l.Get(ctx, "missing") // now a negative entry
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), `row "missing"`)

	_, err = l.WriteThrough(ctx, "gone", func(context.Context) (row, error) { return row{}, errNoRows })
	require.ErrorIs(t, err, ErrNotFound, "WriteThrough maps no rows as Get does")
	require.Contains(t, err.Error(), `row "gone"`)

	neg := newLoader(t, rdb, &table{rows: map[string]row{"n": {Val: "x", Ver: -3}}}, nil)
	_, err = neg.Get(ctx, "n")
	require.ErrorIs(t, err, ErrNegativeVersion, "a loaded negative version is as loud as Set's")
	require.False(t, hasField(t, rdb, neg.Key("n"), "p"), "and it is not cached")
}

// A planted huge value costs a Get no more than MaxValueBytes to find out
// about: it is corrupt, replaced after one load, and no Redis call fails.
func TestHugeValueInRedisIsCorruptAndReplaced(t *testing.T) {
	rdb := testenv.Redis(t, "")
	tb := newTable()
	tb.put("a", "good")
	// The default budget: reading the entry must fit in it (the Redis
	// errors it could still cause on a starved machine are counted).
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: defaultRedisTimeout})
	ctx := context.Background()
	huge := entry.Header(entry.FlagPayload, time.Now().UnixMicro(), 1, 0, 0, 0, "") + strings.Repeat("x", 40<<20)
	require.NoError(t, rdb.Set(ctx, l.Key("a"), huge, time.Minute).Err())
	for range 8 {
		v, err := l.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, "good", v.Val)
	}
	s := l.Stats()
	t.Logf("stats: %+v", s)
	require.NotZero(t, s.CorruptEntries, "found")
	require.LessOrEqual(t, uint64(tb.loads.Load()), s.CorruptEntries+s.RedisErrors, "a load per sighting at most")
	require.Less(t, rdb.StrLen(ctx, l.Key("a")).Val(), int64(1000), "replaced")
	hits := s.Hits
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, hits+1, l.Stats().Hits)
}

// Once Redis answers again, the breaker closes by the prober's PING, not
// when some Get happens by after the cooldown.
func TestBreakerClosesWhenRedisIsBackWithoutGets(t *testing.T) {
	direct, p, rdb := proxiedRedis(t)
	tb := newTable()
	tb.put("a", "a1")
	l := newLoader(t, rdb, tb, &Options{Prefix: testenv.Prefix(t, direct, "cachetest:"), RedisTimeout: faultRedisTimeout,
		BreakerFailures: 2})
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)

	require.NoError(t, p.Set(faultproxy.Refuse, 0))
	for l.BreakerState() != BreakerOpen {
		_, err := l.Get(ctx, "a")
		require.NoError(t, err, "fail-open")
	}
	require.NoError(t, p.Set(faultproxy.Pass, 0))
	back := time.Now()
	require.Eventually(t, func() bool { return l.BreakerState() == BreakerClosed }, 10*time.Second, time.Millisecond,
		"the breaker closes with no Get calling")
	t.Logf("Redis back to breaker closed: %v (cooldown %v, probe every %v)", time.Since(back), defaultBreakerCool, probeEvery)
	hits := l.Stats().Hits
	_, err = l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, hits+1, l.Stats().Hits, "the next Get is a hit")
}

// An invalidation is a write's last step: delays beyond RedisTimeout are
// waited out within InvalidateTimeout, and what Redis never answers is
// queued (ErrQueued), bypassed by this process's Gets, and applied when
// Redis is back.
func TestInvalidatePersistsThroughFaults(t *testing.T) {
	direct, p, rdb := proxiedRedis(t)
	tb := newTable()
	tb.put("a", "a1")
	prefix := testenv.Prefix(t, direct, "cachetest:")
	l := newLoader(t, rdb, tb, &Options{Prefix: prefix, RedisTimeout: faultRedisTimeout,
		InvalidateTimeout: 2 * time.Second, DisableBreaker: true})
	other := newLoader(t, direct, tb, &Options{Prefix: prefix}) // another process, unaffected by the faults
	ctx := context.Background()
	_, err := other.Get(ctx, "a")
	require.NoError(t, err)

	// Slow replies: every call takes longer than RedisTimeout.
	require.NoError(t, p.Set(faultproxy.Latency, 3*faultRedisTimeout))
	tb.put("a", "a2")
	require.NoError(t, l.Invalidate(ctx, "a"), "a slow Redis delays an invalidation, it does not fail it")
	v, err := other.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "a2", v.Val)

	// No answers at all: queued.
	require.NoError(t, p.Set(faultproxy.Blackhole, 0))
	tb.put("a", "a3")
	err = l.Invalidate(ctx, "a")
	require.ErrorIs(t, err, ErrQueued)
	require.EqualValues(t, 1, l.Stats().InvalidationsPending)
	v, err = l.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "a3", v.Val, "this process bypasses the queued key")

	require.NoError(t, p.Set(faultproxy.Pass, 0))
	require.Eventually(t, func() bool { return l.Stats().InvalidationsPending == 0 }, 10*time.Second, time.Millisecond)
	v, err = other.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "a3", v.Val, "the queued invalidation reached the other process's Redis")
}

var errNoRows = sql.ErrNoRows

// proxiedRedis returns a client of the real Redis, and one that reaches it
// through a fault proxy (closed when the test ends).
func proxiedRedis(t *testing.T) (direct *redis.Client, p *faultproxy.Proxy, rdb *redis.Client) {
	t.Helper()
	direct = testenv.Redis(t, "")
	p, err := faultproxy.Start(testenv.RedisAddr())
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	rdb = redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return direct, p, rdb
}
