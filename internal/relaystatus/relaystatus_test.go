package relaystatus

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestPublishAndRead(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	const prefix = "app:"

	got, err := Read(ctx, rdb, prefix)
	if err != nil || len(got) != 0 {
		t.Fatalf("nothing published: %v, %v", got, err)
	}

	st := &Status{Relay: "orders", Host: "h1", PID: 7, Applied: "gtid:0-1-10", Behind: 0, IntervalMs: 1000}
	if err := Publish(ctx, rdb, prefix, "orders", InstanceID("h1", 7, "a"), st, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := Publish(ctx, rdb, prefix, "orders", InstanceID("h2", 8, "b"), nil, time.Second); err != nil {
		t.Fatal(err)
	}
	got, err = Read(ctx, rdb, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "orders" || got[0].Status == nil || got[0].Status.Host != "h1" ||
		got[0].Status.Applied != "gtid:0-1-10" || len(got[0].Instances) != 2 {
		t.Fatalf("read %+v", got)
	}
	if ttl := mr.TTL(StatusKey(prefix, "orders")); ttl != TTL(time.Second) {
		t.Errorf("status TTL %v, want %v", ttl, TTL(time.Second))
	}

	// A standby that stops leaves; the leader's status expires, the index
	// keeps the name.
	if err := Leave(ctx, rdb, prefix, "orders", InstanceID("h2", 8, "b")); err != nil {
		t.Fatal(err)
	}
	mr.FastForward(TTL(time.Second) + time.Millisecond)
	got, err = Read(ctx, rdb, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Status != nil || len(got[0].Instances) != 0 || got[0].LastPublished.IsZero() {
		t.Fatalf("after expiry %+v", got)
	}
}

func TestBehind(t *testing.T) {
	for _, tc := range []struct {
		applied, server string
		want            int64
		ok              bool
	}{
		{"0-1-10", "0-1-10", 0, true},
		{"0-1-10", "0-1-15", 5, true},
		{"0-1-10,1-2-3", "0-1-12,1-2-7", 6, true},
		{"", "0-1-3", 3, true},
		{"0-1-20", "0-1-15", 0, true},
		{"3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5", "0-1-3", 0, false},
		{"0-1-x", "0-1-3", 0, false},
	} {
		n, ok := Behind(tc.applied, tc.server)
		if n != tc.want || ok != tc.ok {
			t.Errorf("Behind(%q, %q) = %d, %v; want %d, %v", tc.applied, tc.server, n, ok, tc.want, tc.ok)
		}
	}
}

func TestLockName(t *testing.T) {
	if n := LockName("cache"); len(n) > 64 || n != LockName("cache") || n == LockName("cache2") {
		t.Fatalf("LockName: %q", n)
	}
}
