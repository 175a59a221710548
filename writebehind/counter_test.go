package writebehind_test

import (
	"context"
	"errors"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// miniCounter returns a Counter on a miniredis (which has no CONFIG).
func miniCounter(t *testing.T, opts writebehind.Options) (*writebehind.Counter, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	opts.SkipPolicyCheck = true
	c, err := writebehind.New(rdb, "likes", &opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, mr
}

func TestAddAndPending(t *testing.T) {
	c, _ := miniCounter(t, writebehind.Options{})
	ctx := context.Background()
	for _, d := range []int64{1, 1, 5, -2, 0} {
		if err := c.Add(ctx, "post:1", d); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := c.Pending(ctx, "post:1"); err != nil || p != 5 {
		t.Fatalf("Pending = %d, %v; want 5", p, err)
	}
	if p, err := c.Pending(ctx, "post:2"); err != nil || p != 0 {
		t.Fatalf("Pending of an untouched key = %d, %v; want 0", p, err)
	}
	if s := c.Stats(); s.Counted != 4 {
		t.Fatalf("stats %+v: want 4 counted (a 0 delta is no call)", s)
	}
}

// A call whose reply was lost is sent again with the same arguments (the
// client's own retry, or AddOnce with the caller's token): it counts once.
func TestAddOnceCountsOnce(t *testing.T) {
	c, _ := miniCounter(t, writebehind.Options{})
	ctx := context.Background()
	for range 3 {
		if err := c.AddOnce(ctx, "post:1", 1, "req-42"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddOnce(ctx, "post:1", 1, "req-43"); err != nil {
		t.Fatal(err)
	}
	if p, _ := c.Pending(ctx, "post:1"); p != 2 {
		t.Fatalf("Pending = %d, want 2 (two distinct tokens)", p)
	}
	if s := c.Stats(); s.Counted != 2 || s.Duplicates != 2 {
		t.Fatalf("stats %+v, want 2 counted, 2 duplicates", s)
	}
	if err := c.AddOnce(ctx, "post:1", 1, ""); !errors.Is(err, writebehind.ErrEmptyToken) {
		t.Fatalf("empty token: %v", err)
	}
}

func TestBacklogFull(t *testing.T) {
	c, _ := miniCounter(t, writebehind.Options{MaxPendingEntries: 3, Shards: 1})
	ctx := context.Background()
	for i := range 3 {
		if err := c.Add(ctx, keyName(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Add(ctx, "post:9", 1); !errors.Is(err, writebehind.ErrBacklogFull) {
		t.Fatalf("4th Add: %v, want ErrBacklogFull", err)
	}
	if p, _ := c.Pending(ctx, "post:9"); p != 0 {
		t.Fatalf("a refused Add was counted: %d", p)
	}
	if s := c.Stats(); s.BacklogFull != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// Add does not fail open: with Redis gone it returns the error.
func TestAddRedisDown(t *testing.T) {
	c, mr := miniCounter(t, writebehind.Options{})
	mr.Close()
	if err := c.Add(context.Background(), "post:1", 1); err == nil {
		t.Fatal("Add with Redis down returned nil")
	}
	if _, err := c.Pending(context.Background(), "post:1"); err == nil {
		t.Fatal("Pending with Redis down returned nil")
	}
	if s := c.Stats(); s.Errors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestGet(t *testing.T) {
	c, _ := miniCounter(t, writebehind.Options{})
	ctx := context.Background()
	if _, err := c.Get(ctx, "post:1"); !errors.Is(err, writebehind.ErrNoRead) {
		t.Fatalf("Get without Read: %v", err)
	}
	c2, err := writebehind.New(redisOf(t, c), "likes", &writebehind.Options{SkipPolicyCheck: true,
		Read: func(context.Context, string) (int64, error) { return 100, nil }})
	if err != nil {
		t.Fatal(err)
	}
	c2.Add(ctx, "post:1", 3)
	if v, err := c2.Get(ctx, "post:1"); err != nil || v != 103 {
		t.Fatalf("Get = %d, %v; want 100 + 3", v, err)
	}
}

func TestNewValidates(t *testing.T) {
	c, _ := miniCounter(t, writebehind.Options{})
	rdb := redisOf(t, c)
	for name, o := range map[string]writebehind.Options{
		"brace in prefix": {Prefix: "a{b"},
		"negative shards": {Shards: -1},
		"short TokenTTL":  {TokenTTL: 1},
		"negative max":    {MaxPendingEntries: -1},
	} {
		o.SkipPolicyCheck = true
		if _, err := writebehind.New(rdb, "likes", &o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := writebehind.New(rdb, "a}b", &writebehind.Options{SkipPolicyCheck: true}); err == nil {
		t.Error("brace in name: no error")
	}
	if _, err := writebehind.New(rdb, "likes", nil); err == nil {
		t.Error("miniredis has no CONFIG: New must fail unless SkipPolicyCheck")
	}
}

// redisOf returns a new client of c's miniredis.
func redisOf(t *testing.T, c *writebehind.Counter) redis.UniversalClient {
	t.Helper()
	return writebehind.ClientOf(c)
}

// New refuses a server that may evict keys without a TTL.
func TestNewRefusesEvictingPolicy(t *testing.T) {
	for policy, ok := range map[string]bool{"allkeys-lru": false, "allkeys-random": false, "volatile-lru": true, "noeviction": true} {
		t.Run(policy, func(t *testing.T) {
			srv := testenv.StartRedis(t, testenv.RedisConfig{Args: []string{"--maxmemory-policy", policy}})
			_, err := writebehind.New(srv.Client(t), "likes", nil)
			if ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !ok && err == nil {
				t.Fatal("accepted an evicting policy")
			}
		})
	}
}
