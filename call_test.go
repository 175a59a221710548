package cache

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A blackholed Redis opens the breaker and shows in Stats as Redis errors
// even when every caller's deadline is shorter than RedisTimeout: were a
// call cut short by its caller's deadline excluded from the breaker, every
// Get would spend its whole deadline waiting on Redis and fail, for as long
// as the outage lasts (DESIGN P4, P6).
func TestBlackholeOpensBreakerUnderShortCallerDeadlines(t *testing.T) {
	_, rdb := fakeRedis(t)
	rdb.AddHook(blackhole())
	tb := newTable()
	tb.put("a", "a1")
	l := newLoader(t, rdb, tb, &Options{Prefix: "t:", BreakerFailures: 3}) // RedisTimeout 50ms
	var errs []error
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := l.Get(ctx, "a")
		cancel()
		errs = append(errs, err)
	}
	s := l.Stats()
	require.NotZero(t, s.RedisErrors, "10 reads waited on Redis until the caller's deadline; Gets: %v", errs)
	require.Equal(t, BreakerOpen, l.BreakerState())
}
