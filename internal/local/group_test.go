package local

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestGroup: two servers as the masters of one Group feeding one Store.
// A Wait covers a write on either; one master down refuses every ticket
// and fails every Wait; a Sync that drops it flushes the Store, and the
// Group of the one left is trusted again.
func TestGroup(t *testing.T) {
	srvA := testenv.StartRedis(t, testenv.RedisConfig{})
	srvB := testenv.StartRedis(t, testenv.RedisConfig{})
	ra, rb := srvA.Client(t), srvB.Client(t)
	ctx := context.Background()
	prefix := "local:group:"
	st := NewStore[string](StoreOptions{})
	g := NewGroup(StreamOptions{Prefixes: []string{prefix}, Sink: st})
	t.Cleanup(func() {
		g.Close()
		st.Close()
	})
	both := map[string]*redis.Options{srvA.Addr: ra.Options(), srvB.Addr: rb.Options()}
	if changed, err := g.Sync(both); !changed || err != nil {
		t.Fatalf("first Sync: %v %v", changed, err)
	}
	if st.Epoch() != 0 {
		t.Fatal("the first Sync flushed an empty Group's store")
	}
	waitFor(t, func() bool { return g.Wait(ctx) == nil && g.Up() })
	if changed, _ := g.Sync(both); changed {
		t.Fatal("the same masters changed the Group")
	}

	ka, kb := prefix+"a", prefix+"b"
	fill := func(rdb *redis.Client, key string) bool {
		tk := g.Begin()
		v, err := rdb.Get(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return st.Fill(tk, key, v, len(v), time.Minute)
	}
	ra.Set(ctx, ka, "a1", 0)
	rb.Set(ctx, kb, "b1", 0)
	if err := g.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !fill(ra, ka) || !fill(rb, kb) {
		t.Fatal("fill refused")
	}
	rb.Set(ctx, kb, "b2", 0)
	if err := g.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Get(kb); ok {
		t.Fatal("a write on the second master was not applied by the Group's barrier")
	}
	if _, ok := st.Get(ka); !ok {
		t.Fatal("the first master's entry was dropped")
	}

	// One master down: nothing is trusted.
	before := st.Stats().Flushes
	srvB.Kill(t)
	waitFor(t, func() bool { return st.Stats().Flushes > before }) // the flush done, not only begun
	if g.Begin().ok {
		t.Fatal("a ticket while a master is down")
	}
	if err := g.Wait(ctx); !errors.Is(err, ErrDown) {
		t.Fatalf("Wait while a master is down: %v", err)
	}
	if g.Fresh(time.Hour) {
		t.Fatal("fresh while a master is down")
	}

	// The Group follows the masters: B gone.
	epoch := st.Epoch()
	if changed, err := g.Sync(map[string]*redis.Options{srvA.Addr: ra.Options()}); !changed || err != nil {
		t.Fatalf("Sync without B: %v %v", changed, err)
	}
	if st.Epoch() == epoch || g.Stats().Changes != 1 || g.Stats().Masters != 1 {
		t.Fatalf("the change did not flush: %+v", g.Stats())
	}
	if !g.Has(srvA.Addr) || g.Has(srvB.Addr) {
		t.Fatalf("Has: %v", g.Addrs())
	}
	if err := g.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !fill(ra, ka) {
		t.Fatal("fill refused after the Group was whole again")
	}
	ra.Set(ctx, ka, "a2", 0)
	if err := g.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Get(ka); ok {
		t.Fatal("invalidation lost after the change")
	}
}
