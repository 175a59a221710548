package main

import (
	"time"

	"github.com/f4df6ac3/cache"
)

// Factories lists every implementation, this library first.
func Factories() []Factory {
	return []Factory{
		{Name: "this library", New: newLib(nil)},
		{Name: "this library (SWR)", New: newLib(func(o *cache.Options) { o.StaleWhileRevalidate = true; o.MaxStale = time.Minute }),
			Note: "StaleWhileRevalidate on, MaxStale 1 min (early refresh is on by default)"},
		{Name: "this library + tier (strict)", New: newLib(func(o *cache.Options) { o.Local = &cache.LocalOptions{} }),
			Note: "Options.Local, MaxLag 0: a Get answers from process memory only after a barrier PING on the CLIENT TRACKING stream returned"},
		{Name: "this library + tier (MaxLag 5ms)", New: newLib(func(o *cache.Options) { o.Local = &cache.LocalOptions{MaxLag: 5 * time.Millisecond} }),
			Note: "Options.Local, MaxLag 5 ms: answers from process memory while the last returned barrier was sent < 5 ms ago"},
		{Name: "textbook", New: newNaive, Note: "GET / SELECT+SET EX / UPDATE+DEL"},
		{Name: "go-redis/cache", New: newGoRedisCache(true), MinTTL: time.Second, Note: "README: Once + TinyLFU local cache"},
		{Name: "go-redis/cache (redis only)", New: newGoRedisCache(false), MinTTL: time.Second, Note: "TTLs under 1 s are not honoured"},
		{Name: "rockscache weak", New: newRocks(false), MinTTL: 11 * time.Second, Note: "TTLs in whole seconds minus its 10 s Delay"},
		{Name: "rockscache strong", New: newRocks(true), MinTTL: 11 * time.Second},
		{Name: "gocache loadable", New: newGocache, Note: "LoadableCache over store/redis/v4; async set"},
		{Name: "go-zero cache", New: newGoZero, MinTTL: time.Second, Note: "cache node + singleflight; one shared client per address; TTL rounded up to whole seconds"},
		{Name: "sturdyc", New: newSturdyc, Note: "in-memory + Redis DistributedStorage"},
	}
}
