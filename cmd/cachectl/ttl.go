package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var ttlCmd = &command{
	name:    "ttl",
	args:    "PATTERN [-sample N] [-window D] [-threshold F]",
	summary: "SCAN-sampled TTL histogram; warns on synchronized expiry",
	help: `Samples up to -sample keys matching PATTERN (a SCAN MATCH glob, e.g.
"app:user#2:*") with SCAN — never KEYS — and reads their PTTLs. Warns when
more than -threshold of the sampled keys with an expiry expire within one
-window (default 20% within 1s): they will miss together and hit the
database together. The fix is TTL jitter (Options.Jitter, on by default;
DisableJitter turns it off). On Redis Cluster (-cluster, or several -redis
addresses) every master is scanned, and the sample spread over them.`,
	minArgs: 1, maxArgs: 1,
	flags: func(fs *flag.FlagSet) runFunc {
		sample := fs.Int("sample", 1000, "how many keys to sample at most")
		window := fs.Duration("window", time.Second, "width of the synchronized-expiry window")
		threshold := fs.Float64("threshold", 0.2, "fraction of the sample in one window that triggers the warning")
		minKeys := fs.Int("min", 10, "fewest keys with an expiry needed to judge")
		return func(ctx context.Context, e *env, args []string) error {
			if *sample < 1 || *window <= 0 || *threshold <= 0 || *threshold > 1 {
				return usagef("-sample must be >= 1, -window > 0, -threshold in (0, 1]")
			}
			return ttlHistogram(ctx, e, args[0], *sample, *window, *threshold, *minKeys)
		}
	},
}

// ttlBucket is one histogram bar: how many sampled keys have a PTTL in the
// range Label names.
type ttlBucket struct {
	Label string `json:"label"`
	Count int    `json:"count"`
}

type ttlReport struct {
	Pattern   string      `json:"pattern"`
	Nodes     []string    `json:"nodes"` // the servers scanned: every master of a cluster
	Sampled   int         `json:"sampled"`
	NoExpiry  int         `json:"no_expiry"`
	Gone      int         `json:"gone"` // expired between SCAN and PTTL
	MinMs     int64       `json:"min_ms"`
	MaxMs     int64       `json:"max_ms"`
	Buckets   []ttlBucket `json:"buckets"`
	PeakCount int         `json:"peak_count"` // keys expiring within one window
	PeakInMs  int64       `json:"peak_in_ms"` // when that window starts, from now
	WindowMs  int64       `json:"window_ms"`
	Synced    bool        `json:"synchronized"`
	Warnings  []string    `json:"warnings"`
}

var ttlEdges = []struct {
	to    time.Duration
	label string
}{
	{time.Second, "< 1s"}, {5 * time.Second, "1s-5s"}, {30 * time.Second, "5s-30s"},
	{time.Minute, "30s-1m"}, {5 * time.Minute, "1m-5m"}, {15 * time.Minute, "5m-15m"},
	{time.Hour, "15m-1h"}, {6 * time.Hour, "1h-6h"}, {24 * time.Hour, "6h-1d"},
	{1<<63 - 1, ">= 1d"},
}

func ttlHistogram(ctx context.Context, e *env, pattern string, sample int, window time.Duration, threshold float64, minKeys int) error {
	keys, nodes, err := scanSample(ctx, e.rdb, pattern, sample)
	if err != nil {
		return err
	}
	r := ttlReport{Pattern: pattern, Nodes: nodes, WindowMs: window.Milliseconds(), Warnings: []string{}}
	var ttls []int64 // ms, keys with an expiry
	for chunk := range slices.Chunk(keys, 500) {
		pipe := e.rdb.Pipeline()
		cmds := make([]*redis.DurationCmd, len(chunk))
		for i, k := range chunk {
			cmds[i] = pipe.PTTL(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis PTTL: %w", err)
		}
		for _, c := range cmds {
			switch d := c.Val(); {
			case d == -1:
				r.NoExpiry++
			case d < 0:
				r.Gone++
			default:
				ttls = append(ttls, d.Milliseconds())
			}
		}
	}
	r.Sampled = len(keys) - r.Gone
	counts := make([]int, len(ttlEdges))
	for _, t := range ttls {
		for i, b := range ttlEdges {
			if time.Duration(t)*time.Millisecond < b.to {
				counts[i]++
				break
			}
		}
	}
	for i, b := range ttlEdges {
		if counts[i] > 0 {
			r.Buckets = append(r.Buckets, ttlBucket{b.label, counts[i]})
		}
	}
	if len(ttls) > 0 {
		slices.Sort(ttls)
		r.MinMs, r.MaxMs = ttls[0], ttls[len(ttls)-1]
		// The busiest window: most keys whose expiries lie within one
		// window of each other (a sliding window, not fixed seconds, so
		// keys either side of a second boundary still count together).
		w := window.Milliseconds()
		for i, j := 0, 0; j < len(ttls); j++ {
			for ttls[j]-ttls[i] >= w {
				i++
			}
			if n := j - i + 1; n > r.PeakCount {
				r.PeakCount, r.PeakInMs = n, ttls[i]
			}
		}
	}
	switch {
	case len(ttls) < minKeys:
		if len(ttls) > 0 {
			r.Warnings = append(r.Warnings, fmt.Sprintf("only %d keys with an expiry: too few to judge synchronized expiry", len(ttls)))
		}
	case float64(r.PeakCount) > threshold*float64(len(ttls)):
		r.Synced = true
		r.Warnings = append(r.Warnings, fmt.Sprintf(
			"synchronized expiry: %d of %d keys (%.0f%%) expire within %s of each other, in %s: they will miss together; add TTL jitter (Options.Jitter, do not set DisableJitter)",
			r.PeakCount, len(ttls), 100*float64(r.PeakCount)/float64(len(ttls)), window, msDur(r.PeakInMs)))
	}
	if r.NoExpiry > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d keys have no expiry: cache entries always have one, so these are not entries (or something removed their TTL)", r.NoExpiry))
	}
	if e.json {
		return writeJSON(e.stdout, r)
	}
	w := e.stdout
	fmt.Fprintf(w, "pattern %s: %d keys sampled, %d with an expiry, %d without\n", pattern, r.Sampled, len(ttls), r.NoExpiry)
	if len(nodes) > 1 {
		fmt.Fprintf(w, "scanned %d masters: %s\n", len(nodes), strings.Join(nodes, ", "))
	}
	if len(ttls) > 0 {
		fmt.Fprintf(w, "TTL min %s, max %s\n", msDur(r.MinMs), msDur(r.MaxMs))
		for _, b := range r.Buckets {
			bar := strings.Repeat("#", max(1, b.Count*40/len(ttls)))
			fmt.Fprintf(w, "  %-8s %6d %s\n", b.Label, b.Count, bar)
		}
		fmt.Fprintf(w, "busiest %s window: %d keys, in %s\n", window, r.PeakCount, msDur(r.PeakInMs))
	}
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", s)
	}
	if !r.Synced && len(ttls) >= minKeys {
		fmt.Fprintln(w, "expiries are spread: no synchronized expiry")
	}
	return nil
}

// scanSample returns up to sample distinct keys matching pattern, found
// with SCAN (never KEYS), and the servers it scanned. SCAN only sees the
// keys of the server it runs on, so on a cluster every master is scanned,
// each for an equal share of the sample (a master with fewer keys leaves
// its share to the next).
func scanSample(ctx context.Context, rdb redis.UniversalClient, pattern string, sample int) ([]string, []string, error) {
	var keys, nodes []string
	var masters []redis.UniversalClient
	err := forEachNode(ctx, rdb, func(ctx context.Context, node redis.UniversalClient, addr string) error {
		masters = append(masters, node)
		nodes = append(nodes, addr)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for i, node := range masters {
		want := (sample - len(keys)) / (len(masters) - i) // this node's share of what is left
		if i == len(masters)-1 {
			want = sample - len(keys)
		}
		got, err := scanNode(ctx, node, pattern, want)
		if err != nil {
			return nil, nil, fmt.Errorf("redis SCAN %s: %w", nodes[i], err)
		}
		keys = append(keys, got...)
	}
	return keys, nodes, nil
}

// scanNode returns up to n distinct keys matching pattern on one server.
func scanNode(ctx context.Context, node redis.UniversalClient, pattern string, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	var keys []string
	var cursor uint64
	for len(keys) < n {
		batch, next, err := node.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return nil, err
		}
		keys = append(keys, batch...)
		cursor = next
		if cursor == 0 {
			break
		}
		keys = slices.Compact(slices.Sorted(slices.Values(keys))) // SCAN may repeat keys
	}
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	if len(keys) > n {
		keys = keys[:n]
	}
	return keys, nil
}
