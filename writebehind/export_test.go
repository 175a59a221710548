package writebehind

import "github.com/redis/go-redis/v9"

// SetAfterCommit installs the hook called between a batch's commit and its
// acknowledgement. Call it before any flusher runs.
func SetAfterCommit(fn func()) { afterCommit = fn }

// ClientOf returns the Redis client a Counter was made with.
func ClientOf(c *Counter) redis.UniversalClient { return c.rdb }

// StreamKey returns the Redis key of shard s's log.
func StreamKey(c *Counter, s int) string { return c.streamKey(s) }
