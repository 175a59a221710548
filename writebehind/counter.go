package writebehind

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Counter absorbs increments of many int64 counters (likes, views) in
// Redis; Flushers apply them to MySQL. A Counter is safe for concurrent
// use; every process may have its own over the same name.
type Counter struct {
	rdb      redis.UniversalClient
	name     string
	id       string // prefix + name: the counter's identity in the applied table
	prefix   string
	shards   int
	tokenTTL time.Duration
	maxLen   int64
	replicas int
	waitFor  time.Duration
	single   *redis.Client // rdb, when Replicas needs WAIT on one connection
	read     ReadFunc
	timeout  time.Duration
	batch    batcher
	stats    counterStats
	prom     *counterProm
}

// New returns a Counter named name on rdb. It refuses (returns an error)
// when a server's maxmemory-policy may evict keys that have no TTL
// (allkeys-*): an evicted stream or pending hash is a silent loss of
// counted deltas. Policies noeviction and volatile-* are accepted.
func New(rdb redis.UniversalClient, name string, opts *Options) (*Counter, error) {
	if rdb == nil {
		return nil, errors.New("writebehind: nil Redis client")
	}
	if name == "" || strings.ContainsAny(name, "{}") {
		return nil, fmt.Errorf("writebehind: invalid counter name %q (non-empty, no '{' or '}')", name)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "wb:"
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("writebehind: prefix %q contains '{' or '}' (the counter sets its own hash tag)", o.Prefix)
	}
	if o.Shards == 0 {
		o.Shards = 1
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = time.Minute
	}
	if o.ReplicaTimeout == 0 {
		o.ReplicaTimeout = 100 * time.Millisecond
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 5 * time.Second
	}
	switch {
	case o.Shards < 0 || o.Shards > 16384:
		return nil, fmt.Errorf("writebehind: Shards %d out of 1..16384", o.Shards)
	case o.TokenTTL < time.Second:
		return nil, fmt.Errorf("writebehind: TokenTTL %v below 1s", o.TokenTTL)
	case o.MaxPendingEntries < 0 || o.Replicas < 0 || o.ReplicaTimeout < 0 || o.WriteTimeout < 0:
		return nil, errors.New("writebehind: negative MaxPendingEntries, Replicas, ReplicaTimeout or WriteTimeout")
	case o.Replicas > 0 && o.WriteTimeout <= o.ReplicaTimeout:
		return nil, errors.New("writebehind: WriteTimeout must exceed ReplicaTimeout")
	}
	c := &Counter{
		rdb: rdb, name: name, id: o.Prefix + name, prefix: o.Prefix, shards: o.Shards,
		tokenTTL: o.TokenTTL, maxLen: int64(o.MaxPendingEntries),
		replicas: o.Replicas, waitFor: o.ReplicaTimeout, read: o.Read, timeout: o.WriteTimeout,
	}
	if o.Replicas > 0 {
		single, ok := rdb.(*redis.Client)
		if !ok {
			return nil, fmt.Errorf("writebehind: Replicas needs a *redis.Client (WAIT must follow the write on its connection), not %T", rdb)
		}
		c.single = single
	}
	if len(c.id) > maxCounterLen {
		return nil, fmt.Errorf("writebehind: prefix + name %q longer than %d bytes", c.id, maxCounterLen)
	}
	if !o.SkipPolicyCheck {
		if err := checkPolicy(context.Background(), rdb); err != nil {
			return nil, err
		}
	}
	if o.Registerer != nil {
		p, err := newCounterProm(o.Registerer, name)
		if err != nil {
			return nil, err
		}
		c.prom = p
	}
	return c, nil
}

// Name returns the counter's name.
func (c *Counter) Name() string { return c.name }

// checkPolicy refuses servers whose maxmemory-policy evicts keys without a
// TTL; on Cluster and Ring it asks every server.
func checkPolicy(ctx context.Context, rdb redis.UniversalClient) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	check := func(ctx context.Context, c *redis.Client) error {
		m, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			return fmt.Errorf("writebehind: reading maxmemory-policy of %s (set SkipPolicyCheck if CONFIG is disabled): %w", c.Options().Addr, err)
		}
		if p := m["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
			return fmt.Errorf("writebehind: %s has maxmemory-policy %s: it may evict unflushed deltas; use noeviction (or volatile-*)", c.Options().Addr, p)
		}
		return nil
	}
	switch r := rdb.(type) {
	case *redis.ClusterClient:
		return r.ForEachMaster(ctx, check)
	case *redis.Ring:
		return r.ForEachShard(ctx, check)
	case *redis.Client:
		return check(ctx, r)
	default:
		m, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			return fmt.Errorf("writebehind: reading maxmemory-policy (set SkipPolicyCheck if CONFIG is disabled): %w", err)
		}
		if p := m["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
			return fmt.Errorf("writebehind: maxmemory-policy %s may evict unflushed deltas; use noeviction (or volatile-*)", p)
		}
		return nil
	}
}

// shardOf returns the shard of a counter key.
func (c *Counter) shardOf(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(c.shards))
}

// tag returns shard s's hash tag: every key of a shard has it, so a
// shard's keys share one Cluster slot.
func (c *Counter) tag(s int) string {
	return c.prefix + "{" + c.name + ":" + strconv.Itoa(s) + "}"
}

func (c *Counter) pendingKey(s int) string { return c.tag(s) + ":p" }
func (c *Counter) streamKey(s int) string  { return c.tag(s) + ":s" }
func (c *Counter) headKey(s int) string    { return c.tag(s) + ":h" }
func (c *Counter) tokenKey(s int, bucket int64) string {
	return c.tag(s) + ":t:" + strconv.FormatInt(bucket, 10)
}

// Add adds delta (which may be negative) to the counter key. It returns
// once Redis has counted it: the delta is then in the shard's pending hash
// (Pending, Get) and in its log, from which a Flusher applies it to MySQL
// exactly once. A delta of 0 does nothing.
//
// Concurrent calls are sent together: while one round trip is in flight,
// the calls arriving meanwhile queue, and the next round trip carries all
// of them, one script run (and one log entry) per shard, their deltas
// summed per key.
//
// Add does not fail open: when Redis is unreachable it returns the error,
// and the caller decides (drop the increment, retry, or write to MySQL
// directly). The client's own resend of a script whose reply was lost
// (go-redis MaxRetries) is not counted twice: every run carries a token.
// An Add that returned an error may still have been counted (its reply was
// lost for good); a caller that retries should use AddOnce with one token
// for all attempts, or accept that a retry may count twice.
func (c *Counter) Add(ctx context.Context, key string, delta int64) error {
	return c.add(ctx, key, delta, "")
}

// AddOnce is Add with the caller's idempotency token (a request id): calls
// with the same key and token within Options.TokenTTL are counted once
// (tokens are kept per shard: the same token on keys of different shards
// counts on each). Use it to retry an Add whose outcome is unknown. Each
// AddOnce is a script run of its own (it is not summed with others).
func (c *Counter) AddOnce(ctx context.Context, key string, delta int64, token string) error {
	if token == "" {
		return ErrEmptyToken
	}
	return c.add(ctx, key, delta, token)
}

// newToken returns 16 random bytes: unique per call for every practical
// purpose (math/rand/v2's generator is ChaCha8, seeded from the OS).
func newToken() string {
	var b [16]byte
	for i, v := range [2]uint64{rand.Uint64(), rand.Uint64()} {
		for j := range 8 {
			b[8*i+j] = byte(v >> (8 * j))
		}
	}
	return string(b[:])
}

func (c *Counter) add(ctx context.Context, key string, delta int64, token string) error {
	if key == "" {
		return ErrEmptyKey
	}
	if delta == 0 {
		return nil
	}
	cl := &call{ctx: ctx, key: key, delta: delta, token: token, done: make(chan struct{})}
	c.batch.submit(c, cl)
	select {
	case <-cl.done:
		return cl.err
	case <-ctx.Done():
		// The call may be counted yet (it may be on the wire): unknown.
		return fmt.Errorf("writebehind: add to %s: outcome unknown: %w", c.name, ctx.Err())
	}
}

// Pending returns the sum of key's deltas that Redis counted and no
// Flusher has acknowledged yet (0 when none).
func (c *Counter) Pending(ctx context.Context, key string) (int64, error) {
	if key == "" {
		return 0, ErrEmptyKey
	}
	n, err := c.rdb.HGet(ctx, c.pendingKey(c.shardOf(key)), key).Int64()
	if isNil(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("writebehind: pending of %s: %w", c.name, err)
	}
	return n, nil
}

// Get returns Options.Read(key) plus Pending(key): the counter's value as
// the database will hold it once everything counted so far is flushed.
//
// It is an approximation while a batch holding key is being flushed: it
// reads Pending first and the database value second, so a batch that
// commits in between is counted twice, by at most that batch's delta for
// key, in that call. A Read through a cache is also as stale as the cache:
// invalidate it in FlusherOptions.OnFlushed; until then (a round trip
// after the batch's acknowledgement) Get is low by the batch. Redis
// unreachable is an error: Pending cannot be known.
func (c *Counter) Get(ctx context.Context, key string) (int64, error) {
	if c.read == nil {
		return 0, ErrNoRead
	}
	p, err := c.Pending(ctx, key)
	if err != nil {
		return 0, err
	}
	base, err := c.read(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("writebehind: read of %s: %w", c.name, err)
	}
	return base + p, nil
}
