package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestSentinelPromotesTheReplicaWhenTheMasterIsKilled(t *testing.T) {
	begin := time.Now()
	s := Sentinel(t)
	t.Logf("master, replica and %d sentinels up in %v", len(s.SentinelAddrs), time.Since(begin).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// The write reached the replica: it survives the failover.
	if n, err := c.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}
	first, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first != s.Servers()[0].Addr {
		t.Fatalf("the sentinels report %s as the master; it was started at %s", first, s.Servers()[0].Addr)
	}

	killed := s.KillMaster(t)
	killedAt := time.Now()
	if killed != first {
		t.Fatalf("killed %s, the master was %s", killed, first)
	}
	promoted, at := s.WaitPromoted(t, killed, 30*time.Second)
	t.Logf("%s promoted %v after %s was killed", promoted, at.Sub(killedAt).Round(time.Millisecond), killed)
	if promoted != s.Servers()[1].Addr {
		t.Fatalf("promoted %s, the replica was %s", promoted, s.Servers()[1].Addr)
	}
	// The other sentinels learn the switch from the leader's hello messages.
	err = waitFor(10*time.Second, func(ctx context.Context) error {
		got, err := s.Master(ctx)
		if err == nil && got != promoted {
			err = fmt.Errorf("the sentinels report %s", got)
		}
		return err
	})
	if err != nil {
		t.Fatalf("Master after the failover: %v; want %s", err, promoted)
	}

	// The same client follows the failover.
	var got string
	err = waitFor(10*time.Second, func(ctx context.Context) error {
		got, err = c.Get(ctx, "k").Result()
		return err
	})
	if err != nil || got != "v" {
		t.Fatalf("GET through the failover client after the failover: %q, %v; want v", got, err)
	}
	if err := c.Set(ctx, "k", "w", 0).Err(); err != nil {
		t.Fatalf("SET on the new master: %v", err)
	}
}
