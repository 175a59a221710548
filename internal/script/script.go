// Package script holds the Lua scripts that change cache entries. Each one
// touches exactly one key, so every script works unchanged on Redis Cluster.
package script

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed acquire.lua
	acquireSrc string
	//go:embed fill.lua
	fillSrc string
	//go:embed set.lua
	setSrc string
	//go:embed invalidate.lua
	invalidateSrc string
	//go:embed release.lua
	releaseSrc string
	//go:embed evict.lua
	evictSrc string
)

// The scripts, wrapped once. Run them with Script.Run (EVALSHA, falling back
// to EVAL when the server does not have the script yet).
var (
	Acquire    = redis.NewScript(acquireSrc)
	Fill       = redis.NewScript(fillSrc)
	Set        = redis.NewScript(setSrc)
	Invalidate = redis.NewScript(invalidateSrc)
	Release    = redis.NewScript(releaseSrc)
	Evict      = redis.NewScript(evictSrc)
)

// Acquire statuses (the first element of its reply).
const (
	Granted = 0
	Usable  = 1
	Held    = 2
)

// Fill results.
const (
	Stored     = 1
	LeaseLost  = 0
	OlderValue = -1
)
