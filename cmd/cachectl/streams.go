package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// omemWarnFraction is how close to the pub/sub output-buffer limit a
// tier stream's output buffer may grow before health warns.
const omemWarnFraction = 0.5

// localStreamGroup is the in-process tier streams of one key prefix
// connected to a server: one per process (Loader) with Options.Local.
type localStreamGroup struct {
	Prefix        string `json:"prefix"` // as in the connection name (bytes Redis refuses replaced by '_')
	Streams       int    `json:"streams"`
	Hosts         int    `json:"hosts"` // distinct client addresses' hosts
	OldestSeconds int64  `json:"oldest_age_seconds"`
	NewestSeconds int64  `json:"youngest_age_seconds"`
	MaxIdle       int64  `json:"max_idle_seconds"`
	MaxOmem       int64  `json:"max_omem"`   // the largest output buffer, bytes
	TotalOmem     int64  `json:"total_omem"` // all of them, bytes
}

// localStreams reads CLIENT LIST and the pub/sub output-buffer limit
// (hard, soft: 0 unlimited or unknown) and groups the tier streams.
func localStreams(ctx context.Context, rdb redis.UniversalClient) (groups []localStreamGroup, hard, soft int64, err error) {
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("CLIENT LIST: %w", err)
	}
	if m, err := rdb.ConfigGet(ctx, "client-output-buffer-limit").Result(); err == nil {
		hard, soft = pubsubLimit(m["client-output-buffer-limit"])
	}
	byPrefix := map[string]*localStreamGroup{}
	hosts := map[string]map[string]bool{}
	for line := range strings.SplitSeq(list, "\n") {
		f := clientFields(line)
		prefix, ok := strings.CutPrefix(f["name"], cache.LocalStreamClientName)
		if !ok {
			continue
		}
		num := func(k string) int64 { n, _ := strconv.ParseInt(f[k], 10, 64); return n }
		g := byPrefix[prefix]
		if g == nil {
			g = &localStreamGroup{Prefix: prefix, OldestSeconds: -1, NewestSeconds: -1}
			byPrefix[prefix] = g
			hosts[prefix] = map[string]bool{}
		}
		g.Streams++
		host := f["addr"]
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
		hosts[prefix][host] = true
		age := num("age")
		if g.OldestSeconds < 0 || age > g.OldestSeconds {
			g.OldestSeconds = age
		}
		if g.NewestSeconds < 0 || age < g.NewestSeconds {
			g.NewestSeconds = age
		}
		g.MaxIdle = max(g.MaxIdle, num("idle"))
		g.MaxOmem = max(g.MaxOmem, num("omem"))
		g.TotalOmem += num("omem")
	}
	for p, g := range byPrefix {
		g.Hosts = len(hosts[p])
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(a, b localStreamGroup) int { return strings.Compare(a.Prefix, b.Prefix) })
	return groups, hard, soft, nil
}

// clientFields parses one CLIENT LIST line ("k=v k=v ...").
func clientFields(line string) map[string]string {
	f := map[string]string{}
	for kv := range strings.FieldsSeq(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	return f
}

// pubsubLimit returns the pubsub class's hard and soft limits from the
// client-output-buffer-limit setting ("normal 0 0 0 ... pubsub 33554432
// 8388608 60"); 0 when absent or unlimited.
func pubsubLimit(s string) (hard, soft int64) {
	f := strings.Fields(s)
	for i := 0; i+3 < len(f); i += 4 {
		if f[i] == "pubsub" {
			return memBytes(f[i+1]), memBytes(f[i+2])
		}
	}
	return 0, 0
}

// memBytes parses a Redis memory value ("8388608", "8mb", "32gb").
func memBytes(s string) int64 {
	s = strings.ToLower(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1000}, {"m", 1000 * 1000}, {"g", 1000 * 1000 * 1000}, {"b", 1}} {
		if rest, ok := strings.CutSuffix(s, u.suf); ok {
			s, mult = rest, u.m
			break
		}
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return n * mult
}

// streamWarnings are the warnings about the tier streams: an output
// buffer near the pub/sub limit (soft, else hard), at which Redis
// disconnects the stream and the process's tier is flushed.
func streamWarnings(groups []localStreamGroup, hard, soft int64) []string {
	limit, which := soft, "soft"
	if limit <= 0 {
		limit, which = hard, "hard"
	}
	if limit <= 0 {
		return nil
	}
	var ws []string
	for _, g := range groups {
		if float64(g.MaxOmem) >= omemWarnFraction*float64(limit) {
			ws = append(ws, fmt.Sprintf("in-process tier stream of prefix %q has %d bytes in its output buffer, near the pub/sub %s limit (%d bytes, client-output-buffer-limit): at the limit Redis disconnects it and that process's tier is flushed; the process reads its stream too slowly, or the prefix's keys change too fast for the tier", g.Prefix, g.MaxOmem, which, limit))
		}
	}
	return ws
}

// printStreams prints one server's tier streams.
func printStreams(w io.Writer, groups []localStreamGroup, hard, soft int64) {
	if len(groups) == 0 {
		fmt.Fprintf(w, "tier streams:     none (no connection named %s*: no Loader with Options.Local)\n", cache.LocalStreamClientName)
		return
	}
	lim := func(n int64) string {
		if n <= 0 {
			return "none"
		}
		return strconv.FormatInt(n, 10)
	}
	fmt.Fprintf(w, "tier streams:     %d prefixes (pub/sub output-buffer limit: hard %s, soft %s bytes)\n", len(groups), lim(hard), lim(soft))
	for _, g := range groups {
		fmt.Fprintf(w, "  %s: %d streams from %d hosts, ages %ds..%ds, idle up to %ds, omem max %d total %d bytes\n",
			g.Prefix, g.Streams, g.Hosts, g.NewestSeconds, g.OldestSeconds, g.MaxIdle, g.MaxOmem, g.TotalOmem)
	}
}
