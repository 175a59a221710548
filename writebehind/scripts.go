package writebehind

import (
	_ "embed" // the Lua scripts
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed add.lua
	addSource string
	//go:embed ack.lua
	ackSource string
	//go:embed reap.lua
	reapSource string

	addScript  = redis.NewScript(addSource)
	ackScript  = redis.NewScript(ackSource)
	reapScript = redis.NewScript(reapSource)
)

// isNoScript reports whether err is Redis's NOSCRIPT (EVALSHA of a script
// the server does not have: a restarted or new server).
func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// isNoGroup reports whether err is Redis's NOGROUP: the stream or its
// consumer group is gone (a server restarted without persistence).
func isNoGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOGROUP")
}

// isNil reports whether err is redis.Nil (an empty reply).
func isNil(err error) bool { return errors.Is(err, redis.Nil) }

// isBusyGroup reports whether err is Redis's BUSYGROUP: the consumer group
// exists already.
func isBusyGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP")
}

// isNoSuchKey reports whether err is XINFO's error for a missing stream.
func isNoSuchKey(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "ERR no such key")
}
