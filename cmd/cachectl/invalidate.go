package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
)

var invalidateCmd = &command{
	name:    "invalidate",
	args:    "[-tombstone D] [-keep-stale] [-force] KEY ...",
	summary: "turn entries into tombstones, exactly as Loader.Invalidate does",
	help: `Runs the library's own invalidate script on each full key: any lease is
dropped (an in-flight fill of older data is rejected), the version is kept
(older writes stay refused), the generation is bumped, and the key becomes
a tombstone for -tombstone (default 10s = the library's default
LeaseTimeout + LoadTimeout; use at least your loaders' value). The next
Get of the key loads from the database. Absent keys get a tombstone too,
and are reported as absent: no entry was there (a mistyped key?).

Keys that hold something other than a cache entry (another type, or a string
without an entry header) are refused unless -force: the script would
replace them.`,
	minArgs: 1, maxArgs: -1,
	flags: func(fs *flag.FlagSet) runFunc {
		tomb := fs.Duration("tombstone", 10*time.Second, "how long the tombstone lives")
		keep := fs.Bool("keep-stale", false, "keep the payload for stale serving (loaders with MaxStale > 0)")
		force := fs.Bool("force", false, "also invalidate keys that are not cache entries (they are replaced)")
		return func(ctx context.Context, e *env, args []string) error {
			if *tomb < time.Millisecond {
				return usagef("-tombstone must be at least 1ms")
			}
			return invalidate(ctx, e, args, *tomb, *keep, *force)
		}
	},
}

type invalidateResult struct {
	Key         string `json:"key"`
	Invalidated bool   `json:"invalidated"`
	Absent      bool   `json:"absent"` // there was no entry at the key (it got a tombstone anyway)
	Error       string `json:"error,omitempty"`
}

func invalidate(ctx context.Context, e *env, keys []string, tomb time.Duration, keep, force bool) error {
	var res []invalidateResult
	failed := 0
	for _, k := range keys {
		r := invalidateResult{Key: k}
		absent, err := checkEntryKey(ctx, e, k)
		if err != nil && !force {
			r.Error = err.Error()
		} else if err := script.Invalidate(k, tomb, keep, 0).Run(ctx, e.rdb).Err(); err != nil {
			r.Error = "redis: " + err.Error()
		} else {
			r.Invalidated, r.Absent = true, absent
		}
		if r.Error != "" {
			failed++
		}
		res = append(res, r)
	}
	if e.json {
		if err := writeJSON(e.stdout, res); err != nil {
			return err
		}
	} else {
		for _, r := range res {
			switch {
			case r.Absent:
				fmt.Fprintf(e.stdout, "ABSENT %s: there was no entry at this key (mistyped?); it holds a tombstone for %s now\n", r.Key, tomb)
			case r.Invalidated:
				fmt.Fprintf(e.stdout, "invalidated %s (tombstone for %s)\n", r.Key, tomb)
			default:
				fmt.Fprintf(e.stdout, "NOT invalidated %s: %s\n", r.Key, r.Error)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d keys not invalidated", failed, len(keys))
	}
	return nil
}

// checkEntryKey refuses keys that exist and are not cache entries, and
// reports whether the key is absent.
func checkEntryKey(ctx context.Context, e *env, key string) (absent bool, err error) {
	pipe := e.rdb.Pipeline()
	typ := pipe.Type(ctx, key)
	head := pipe.GetRange(ctx, key, 0, entry.HeaderSize-1)
	_, _ = pipe.Exec(ctx)
	if err := typ.Err(); err != nil {
		return false, fmt.Errorf("redis: %w", err)
	}
	switch typ.Val() {
	case "none":
		return true, nil
	case "string":
		if head.Err() == nil && entry.GenerationOf(head.Val()) > 0 {
			return false, nil
		}
		return false, fmt.Errorf("%s is a string without an entry header, not a cache entry (-force to replace it)", key)
	}
	return false, fmt.Errorf("%s is a %s, not a cache entry (-force to replace it)", key, typ.Val())
}
