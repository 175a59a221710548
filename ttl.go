package cache

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// jittered spreads d over d × (1 ± frac), never below 1ms.
func jittered(d time.Duration, frac float64) time.Duration {
	if frac > 0 {
		d = time.Duration(float64(d) * (1 + frac*(2*rand.Float64()-1)))
	}
	return max(d, time.Millisecond)
}

// ms converts a duration to whole milliseconds for Redis, rounding up so that
// a positive duration never becomes 0 (no expiry).
func ms(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// valueTTL is the jittered lifetime of a positive entry.
func (s *settings) valueTTL() time.Duration { return jittered(s.ttl, s.jitter) }

// negativeEntryTTL is the jittered lifetime of a negative entry.
func (s *settings) negativeEntryTTL() time.Duration { return jittered(s.negativeTTL, s.jitter) }

// clock estimates the Redis server's clock, in which entries' expiries are
// written, from the server times the acquire script reports. Until the
// first report it assumes the clocks agree; a wrong estimate only moves
// early refresh and stale decisions by the skew (the scripts themselves use
// the server clock).
type clock struct {
	offset atomic.Int64 // server ms - local ms
}

func (c *clock) observe(serverMS int64) {
	c.offset.Store(serverMS - time.Now().UnixMilli())
}

func (c *clock) serverNow() int64 {
	return time.Now().UnixMilli() + c.offset.Load()
}
