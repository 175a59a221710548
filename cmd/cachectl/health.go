package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var healthCmd = &command{
	name:    "health",
	args:    "[-pings N] [-prefix P] [-dsn DSN]",
	summary: "Redis latency, eviction policy, evictions, hit ratio, memory, clients; in-process tier streams; invalidation relays",
	help: `The diagnosis playbook in one command. Warnings:
  - maxmemory-policy allkeys-*: under memory pressure Redis may evict any key,
    including cache leases and tombstones (weakening the stale-set guard) and
    locks or sessions that share the instance;
  - maxmemory-policy noeviction: wrong for a cache; when memory is full
    (maxmemory, or the host's memory when unlimited) every fill and
    invalidation fails instead of old entries making room (volatile-lru or
    volatile-lfu suit a cache: every entry has a TTL);
  - evicted_keys > 0: memory pressure has already evicted keys;
  - mem_fragmentation_ratio > 1.5 (with at least 64 MiB used);
  - keyspace hit ratio < 50% (over the server's lifetime, all clients);
  - an in-process tier stream whose output buffer (omem) holds half the
    pub/sub client-output-buffer-limit (soft, else hard) or more: at the
    limit Redis disconnects it, which flushes that process's tier.
In-process tier streams (Loaders with Options.Local): the connections
named cache-local:<key prefix> in CLIENT LIST, by prefix: how many (one
per process and Loader), from how many hosts, the oldest and youngest
connection's age, the longest idle, and the output buffers' memory.
On Redis Cluster every master is reported on (with -json: a list).

Invalidation relays. Binlog relays (package cdc) started with
Options.StatusRedis publish their status under the Loaders' prefix
(-prefix, Options.Prefix): for each relay Name, the leader's host and pid,
the applied position, the server's position and the transactions not yet
applied, the age of the last event read and of the checkpoint, events/s,
invalidations/s, failed calls/s and totals, and how many instances
(leader and standbys) run. With -dsn, the relays' checkpoint table
(-cdc-table) gives each Name's stored position and age, and who holds its
leader lock (GET_LOCK) on the server; the outbox table (-outbox-table)
gives its backlog (rows pending, the oldest's age). Warnings:
  - a relay Name whose leader stopped publishing (status expired), or
    whose relay stopped on an error no retry cures (STOPPED, with it);
  - a relay whose last event is over 30s old while the server has
    transactions it has not applied;
  - failing invalidation calls; statement-logged writes it could not see;
  - a checkpoint whose leader lock nobody holds (no relay runs);
  - an outbox row waiting over a minute.
With -json (on Redis Cluster: in the first element) under "relays".`,
	minArgs: 0, maxArgs: 0,
	flags: func(fs *flag.FlagSet) runFunc {
		pings := fs.Int("pings", 5, "how many PINGs to time")
		var rf relayFlags
		fs.StringVar(&rf.prefix, "prefix", "", "the Loaders' Options.Prefix, under which binlog relays publish their status")
		fs.StringVar(&rf.dsn, "dsn", "", "MySQL DSN (go-sql-driver form) of the relays' database: checkpoints, leader locks, outbox backlog")
		fs.StringVar(&rf.cdcTable, "cdc-table", "cache_cdc_checkpoint", "the binlog relays' checkpoint table (cdc.Options.CheckpointTable), with -dsn")
		fs.StringVar(&rf.outboxTable, "outbox-table", "cache_outbox", "the outbox table, with -dsn")
		return func(ctx context.Context, e *env, args []string) error {
			if *pings < 1 {
				return usagef("-pings must be at least 1")
			}
			return health(ctx, e, *pings, rf)
		}
	},
}

type healthReport struct {
	Addr           string   `json:"addr"`
	RedisVersion   string   `json:"redis_version"`
	PingMinMs      float64  `json:"ping_min_ms"`
	PingAvgMs      float64  `json:"ping_avg_ms"`
	PingMaxMs      float64  `json:"ping_max_ms"`
	MaxmemoryPol   string   `json:"maxmemory_policy"` // "" when CONFIG GET is not allowed
	Maxmemory      int64    `json:"maxmemory"`
	UsedMemory     int64    `json:"used_memory"`
	UsedMemoryHum  string   `json:"used_memory_human"`
	Fragmentation  float64  `json:"mem_fragmentation_ratio"`
	EvictedKeys    int64    `json:"evicted_keys"`
	ExpiredKeys    int64    `json:"expired_keys"`
	KeyspaceHits   int64    `json:"keyspace_hits"`
	KeyspaceMisses int64    `json:"keyspace_misses"`
	HitRatio       *float64 `json:"hit_ratio,omitempty"` // nil before the first lookup
	Clients        int64    `json:"connected_clients"`
	BlockedClients int64    `json:"blocked_clients"`
	Warnings       []string `json:"warnings"`
	// LocalStreams are the in-process tier streams connected to this
	// server, by key prefix (CLIENT LIST names beginning with
	// cache.LocalStreamClientName); nil when CLIENT LIST is refused.
	LocalStreams []localStreamGroup `json:"local_streams"`
	// PubsubLimitHard and PubsubLimitSoft are the pub/sub
	// client-output-buffer-limit in bytes (0: none, or unknown).
	PubsubLimitHard int64 `json:"pubsub_limit_hard"`
	PubsubLimitSoft int64 `json:"pubsub_limit_soft"`
	// Relays are the invalidation relays (see relays); nil when none
	// publish and neither -prefix nor -dsn was given.
	Relays *relaysReport `json:"relays,omitempty"`
}

func health(ctx context.Context, e *env, pings int, rf relayFlags) error {
	var reports []*healthReport
	err := forEachNode(ctx, e.rdb, func(ctx context.Context, node redis.UniversalClient, addr string) error {
		r, err := nodeHealth(ctx, node, addr, pings)
		reports = append(reports, r)
		return err
	})
	if err != nil {
		return err
	}
	rel, err := relays(ctx, e.rdb, rf)
	if err != nil {
		return err
	}
	reports[0].Relays = rel
	if e.json {
		if _, ok := e.rdb.(*redis.ClusterClient); ok {
			return writeJSON(e.stdout, reports)
		}
		return writeJSON(e.stdout, reports[0])
	}
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(e.stdout)
		}
		printHealth(e, r, pings)
	}
	if rel != nil {
		fmt.Fprintln(e.stdout)
		printRelays(e.stdout, rel)
	}
	return nil
}

// nodeHealth measures one server.
func nodeHealth(ctx context.Context, rdb redis.UniversalClient, addr string, pings int) (*healthReport, error) {
	r := &healthReport{Addr: addr, Warnings: []string{}}
	var total, lo, hi time.Duration
	for i := range pings {
		t := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			return nil, fmt.Errorf("redis at %s: %w", r.Addr, err)
		}
		d := time.Since(t)
		total += d
		if i == 0 || d < lo {
			lo = d
		}
		hi = max(hi, d)
	}
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	r.PingMinMs, r.PingMaxMs, r.PingAvgMs = msf(lo), msf(hi), msf(total/time.Duration(pings))

	info, err := rdb.Info(ctx, "server", "clients", "memory", "stats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO at %s: %w", r.Addr, err)
	}
	kv := parseInfo(info)
	num := func(k string) int64 { n, _ := strconv.ParseInt(kv[k], 10, 64); return n }
	r.RedisVersion = kv["redis_version"]
	r.UsedMemory, r.UsedMemoryHum = num("used_memory"), kv["used_memory_human"]
	r.Maxmemory = num("maxmemory")
	r.Fragmentation, _ = strconv.ParseFloat(kv["mem_fragmentation_ratio"], 64)
	r.EvictedKeys, r.ExpiredKeys = num("evicted_keys"), num("expired_keys")
	r.KeyspaceHits, r.KeyspaceMisses = num("keyspace_hits"), num("keyspace_misses")
	r.Clients, r.BlockedClients = num("connected_clients"), num("blocked_clients")
	if n := r.KeyspaceHits + r.KeyspaceMisses; n > 0 {
		h := float64(r.KeyspaceHits) / float64(n)
		r.HitRatio = &h
	}
	// INFO memory carries the policy since Redis 4; CONFIG GET may be
	// renamed or forbidden on managed services.
	r.MaxmemoryPol = kv["maxmemory_policy"]
	if r.MaxmemoryPol == "" {
		if m, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result(); err == nil {
			r.MaxmemoryPol = m["maxmemory-policy"]
		}
	}

	if w := policyWarning(r.MaxmemoryPol, r.Maxmemory); w != "" {
		r.Warnings = append(r.Warnings, w)
	}
	if r.EvictedKeys > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d keys evicted since start: memory pressure", r.EvictedKeys))
	}
	if r.Fragmentation > 1.5 && r.UsedMemory >= 64<<20 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("mem_fragmentation_ratio %.2f > 1.5: consider activedefrag or a restart", r.Fragmentation))
	}
	if r.HitRatio != nil && *r.HitRatio < 0.5 && r.KeyspaceHits+r.KeyspaceMisses >= 1000 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("keyspace hit ratio %.1f%% (all clients since start): a key-format change or a flush?", 100**r.HitRatio))
	}
	if groups, hard, soft, err := localStreams(ctx, rdb); err == nil {
		r.LocalStreams, r.PubsubLimitHard, r.PubsubLimitSoft = groups, hard, soft
		if r.LocalStreams == nil {
			r.LocalStreams = []localStreamGroup{}
		}
		r.Warnings = append(r.Warnings, streamWarnings(groups, hard, soft)...)
	} else {
		r.Warnings = append(r.Warnings, "in-process tier streams unknown: "+err.Error())
	}

	return r, nil
}

// policyWarning returns the warning about an eviction policy ("" none).
func policyWarning(policy string, maxmemory int64) string {
	switch {
	case policy == "":
		return "maxmemory-policy unknown (CONFIG GET refused): check it with your provider"
	case strings.HasPrefix(policy, "allkeys-"):
		return fmt.Sprintf("maxmemory-policy %s can evict any key: cache leases and tombstones (a stale set can then land) and any locks or sessions sharing this instance; use volatile-* or a separate instance for them", policy)
	case policy == "noeviction":
		limit := "the host's memory (maxmemory unlimited)"
		if maxmemory > 0 {
			limit = fmt.Sprintf("maxmemory (%d bytes)", maxmemory)
		}
		return "maxmemory-policy noeviction is wrong for a cache: when memory reaches " + limit +
			", every cache fill and invalidation fails (reads fail open to the database) instead of old entries making room; use volatile-lru or volatile-lfu"
	}
	return ""
}

// printHealth prints one server's report.
func printHealth(e *env, r *healthReport, pings int) {
	w := e.stdout
	fmt.Fprintf(w, "redis:            %s (version %s)\n", r.Addr, r.RedisVersion)
	fmt.Fprintf(w, "latency:          min %.2fms  avg %.2fms  max %.2fms (%d PINGs)\n", r.PingMinMs, r.PingAvgMs, r.PingMaxMs, pings)
	pol := r.MaxmemoryPol
	if pol == "" {
		pol = "unknown"
	}
	maxmem := "unlimited"
	if r.Maxmemory > 0 {
		maxmem = strconv.FormatInt(r.Maxmemory, 10) + " bytes"
	}
	fmt.Fprintf(w, "maxmemory-policy: %s (maxmemory %s)\n", pol, maxmem)
	fmt.Fprintf(w, "memory:           used %s, fragmentation %.2f\n", r.UsedMemoryHum, r.Fragmentation)
	fmt.Fprintf(w, "evicted keys:     %d (expired %d)\n", r.EvictedKeys, r.ExpiredKeys)
	if r.HitRatio != nil {
		fmt.Fprintf(w, "hit ratio:        %.1f%% (%d hits, %d misses, all clients since start)\n", 100**r.HitRatio, r.KeyspaceHits, r.KeyspaceMisses)
	} else {
		fmt.Fprintf(w, "hit ratio:        - (no lookups yet)\n")
	}
	fmt.Fprintf(w, "clients:          %d connected, %d blocked\n", r.Clients, r.BlockedClients)
	if r.LocalStreams != nil {
		printStreams(w, r.LocalStreams, r.PubsubLimitHard, r.PubsubLimitSoft)
	}
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", s)
	}
	if len(r.Warnings) == 0 {
		fmt.Fprintln(w, "no warnings")
	}
}

// parseInfo reads INFO's "key:value" lines.
func parseInfo(s string) map[string]string {
	m := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}
