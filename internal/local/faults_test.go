package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestOutputBufferDisconnect: a subscriber too slow for its pub/sub
// output-buffer limit is disconnected by Redis; the tier flushes (the
// invalidations behind the limit are lost) and comes back.
func TestOutputBufferDisconnect(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisConfig{})
	rdb := srv.Client(t)
	ctx := context.Background()
	if err := rdb.ConfigSet(ctx, "client-output-buffer-limit", "pubsub 65536 0 0").Err(); err != nil {
		t.Fatal(err)
	}
	prefix := "local:obuf:"
	var once sync.Once
	stall, inHook := make(chan struct{}), make(chan struct{})
	release := make(chan struct{})
	opts := StreamOptions{
		Timeout: time.Hour, // the disconnect must come from the limit, not a barrier timeout
		onMessage: func([]string) {
			select {
			case <-stall:
			default:
				return
			}
			once.Do(func() {
				close(inHook)
				<-release
			})
		},
	}
	tr := newTier(t, rdb.Options(), prefix, opts)
	key := tr.filled(t, rdb, prefix)
	id := tr.stream.clientID.Load()
	before := tr.store.Stats().Flushes

	close(stall)
	rdb.Set(ctx, key, "v2", 0) // its invalidation stalls the receive loop
	<-inHook
	// Flood the stalled subscriber until Redis drops it.
	long := prefix + strings.Repeat("x", 200)
	for i := 0; ; i++ {
		pipe := rdb.Pipeline()
		for j := range 1000 {
			pipe.Set(ctx, long+itoa(j), i, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		list, err := rdb.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(list, "id="+itoa(int(id))+" ") {
			break
		}
		if i > 1000 {
			t.Fatal("the subscriber was never disconnected")
		}
	}
	close(release)
	waitFor(t, func() bool { return tr.store.Stats().Flushes > before }) // the flush done, not only begun
	if v, ok := tr.store.Get(key); ok {
		t.Fatalf("%q survived the disconnect", v)
	}
	if log, _ := os.ReadFile(filepath.Join(srv.Dir, "server.log")); !strings.Contains(string(log), "output buffer limits") {
		t.Fatalf("the server did not drop the subscriber for its output buffer:\n%s", log)
	}
	waitUp(t, tr.stream)
	if v, ok := tr.fill(t, rdb, key); !ok || v != "v2" {
		t.Fatalf("after recovery: fill %q %v", v, ok)
	}
	rdb.Set(ctx, key, "v3", 0)
	mustWait(t, tr.stream)
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("invalidation lost after recovery")
	}
}

// TestRedisRestart: the server killed and started again. While it is down
// the tier refuses every fill and Wait fails; after it the stream is back.
func TestRedisRestart(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisConfig{})
	rdb := srv.Client(t)
	ctx := context.Background()
	prefix := "local:restart:"
	tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
	key := tr.filled(t, rdb, prefix)
	before := tr.store.Stats().Flushes
	srv.Kill(t)
	waitFor(t, func() bool { return tr.store.Stats().Flushes > before }) // the flush done, not only begun
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("entry survived the restart")
	}
	if tr.store.Fill(tr.stream.Begin(), key, "v1", 2, time.Minute) {
		t.Fatal("fill stored while the server is down")
	}
	if err := tr.stream.Wait(ctx); !errors.Is(err, ErrDown) {
		t.Fatalf("Wait while down: %v", err)
	}
	srv.Restart(t)
	waitUp(t, tr.stream)
	rdb.Set(ctx, key, "v2", 0)
	mustWait(t, tr.stream)
	if v, ok := tr.fill(t, rdb, key); !ok || v != "v2" {
		t.Fatalf("after restart: fill %q %v", v, ok)
	}
	rdb.Set(ctx, key, "v3", 0)
	mustWait(t, tr.stream)
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("invalidation lost after the restart")
	}
}

// TestDemotedMaster: a failover turns the stream's master into a replica
// of another server while the stream's connection stays open. A replica
// applies the new master's writes late, so its barriers prove nothing: the
// role check breaks the stream (flush), and it does not come up again on
// the replica. Pointed back at a master, it does. The replica's master is
// unreachable, so no full sync (whose FLUSHALL the stream would see too)
// hides what the role check does.
func TestDemotedMaster(t *testing.T) {
	a := testenv.StartRedis(t, testenv.RedisConfig{})
	ra := a.Client(t)
	ctx := context.Background()
	prefix := "local:demoted:"
	tr := newTier(t, ra.Options(), prefix, StreamOptions{})
	key := tr.filled(t, ra, prefix)
	before := tr.store.Stats().Flushes

	if err := ra.ReplicaOf(ctx, "127.0.0.1", "1").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return tr.store.Stats().Flushes > before }) // the flush done, not only begun
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("the entry survived the demotion")
	}
	if tr.stream.Stats().RoleFailures == 0 {
		t.Fatal("the flush was not the role check's")
	}
	// However long it retries, it stays down on a replica.
	for range 2 * int(RoleInterval/minBackoff) {
		if tr.stream.Up() || tr.store.Fill(tr.stream.Begin(), key, "x", 1, time.Minute) {
			t.Fatal("the stream trusted a replica")
		}
		if err := tr.stream.Wait(ctx); !errors.Is(err, ErrDown) {
			t.Fatalf("Wait on a replica: %v", err)
		}
		time.Sleep(minBackoff)
	}

	// Promoted back: the stream returns.
	if err := ra.ReplicaOf(ctx, "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	waitUp(t, tr.stream)
	ra.Set(ctx, key, "v2", 0)
	mustWait(t, tr.stream)
	if v, ok := tr.fill(t, ra, key); !ok || v != "v2" {
		t.Fatalf("after promotion: fill %q %v", v, ok)
	}
}
