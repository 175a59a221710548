package writebehind_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/f4df6ac3/cache/writebehind"
)

// The client's own retry of a script whose reply was lost: the script ran,
// its reply is held back past the client's read timeout, go-redis sends it
// again on a new connection — and the increment counts once.
func TestClientRetryCountsOnce(t *testing.T) {
	direct := testenv.Redis(t, "")
	proxy, err := faultproxy.Start(testenv.RedisAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	// go-redis retries a read timeout (not a context deadline): use its
	// ReadTimeout, and enough retries to outlast the held-back replies.
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: 100 * time.Millisecond, MaxRetries: 10})
	t.Cleanup(func() { rdb.Close() })
	prefix := testenv.Prefix(t, direct, "wbtest:")
	c, err := writebehind.New(rdb, "likes", &writebehind.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	view := newCounter(t, direct, &writebehind.Options{Prefix: prefix})
	ctx := context.Background()
	if err := c.Add(ctx, "warm", 1); err != nil { // loads the script: the retried call is EVALSHA
		t.Fatal(err)
	}

	if err := proxy.Set(faultproxy.Latency, time.Second); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Add(ctx, "post:1", 1) }()
	waitFor(t, 10*time.Second, func() bool { p, _ := view.Pending(ctx, "post:1"); return p == 1 }) // the script ran
	time.Sleep(200 * time.Millisecond)                                                             // its reply was given up on
	if err := proxy.Set(faultproxy.Pass, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Add: %v", err)
	}
	if p, _ := view.Pending(ctx, "post:1"); p != 1 {
		t.Fatalf("Pending = %d after one Add whose reply was lost, want 1", p)
	}
	// Counted is the warm-up's: the first run of this call counted, but its
	// reply never arrived; the resend's reply says "already counted".
	if s := c.Stats(); s.Duplicates != 1 || s.Counted != 1 {
		t.Fatalf("stats %+v: want the resend recognized as a duplicate", s)
	}
}

func waitFor(t testing.TB, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Replicas: Add waits until a replica has the write; with the replica gone
// it returns ErrNotReplicated — and the delta is counted all the same.
func TestAddWaitsForReplicas(t *testing.T) {
	primary := testenv.StartRedis(t, testenv.RedisConfig{AppendOnly: true})
	host, port, _ := strings.Cut(primary.Addr, ":")
	replica := testenv.StartRedis(t, testenv.RedisConfig{Args: []string{"--replicaof", host, port}})
	prc := primary.Client(t)
	waitFor(t, 20*time.Second, func() bool {
		info, _ := replica.Client(t).Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	})
	c := newCounter(t, prc, &writebehind.Options{Replicas: 1, ReplicaTimeout: 2 * time.Second})
	ctx := context.Background()
	if err := c.Add(ctx, "post:1", 1); err != nil {
		t.Fatalf("Add with a replica up: %v", err)
	}
	replica.Kill(t)
	c2 := newCounter(t, prc, &writebehind.Options{Replicas: 1, ReplicaTimeout: 200 * time.Millisecond})
	if err := c2.Add(ctx, "post:1", 1); !errors.Is(err, writebehind.ErrNotReplicated) {
		t.Fatalf("Add with the replica down: %v, want ErrNotReplicated", err)
	}
	if p, _ := c2.Pending(ctx, "post:1"); p != 1 {
		// c2 has a prefix of its own: only its Add is there.
		t.Fatalf("Pending = %d, want 1: a not-replicated Add is still counted", p)
	}
	if _, err := writebehind.New(redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{primary.Addr}}), "likes",
		&writebehind.Options{Replicas: 1, SkipPolicyCheck: true}); err == nil {
		t.Fatal("Replicas accepted on a ClusterClient")
	}
}
