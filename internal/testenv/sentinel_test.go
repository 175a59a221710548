package testenv

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	agreed := s.WaitMaster(t, promoted, 10*time.Second)
	t.Logf("every sentinel reports %s %v after the promotion", promoted, agreed.Sub(at).Round(time.Millisecond))

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

func TestSentinelPartitionedMasterAcceptsWritesUntilItRejoinsAsAReplica(t *testing.T) {
	// DownAfter 3s, not 1s: on a loaded 2-core machine the sentinels once
	// flagged the just-promoted replica down within a second of its
	// promotion (its replies to their PINGs late) and failed over back to
	// the old master as the partition healed, so the old master never
	// became a replica. The test is about the partition, not about that.
	s := StartSentinel(t, SentinelConfig{Partitionable: true, DownAfter: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	direct := s.Server(old).Client(t) // what the partition does not cut

	s.Partition(t)
	cut := time.Now()
	promoted, at := s.WaitPromoted(t, old, 30*time.Second)
	t.Logf("%s promoted %v after the partition", promoted, at.Sub(cut).Round(time.Millisecond))
	// Split brain: the old master still takes writes, which the new one
	// never sees.
	if err := direct.Set(ctx, "k", "lost", 0).Err(); err != nil {
		t.Fatalf("SET on the partitioned old master: %v", err)
	}
	err = waitFor(10*time.Second, func(ctx context.Context) error {
		got, err := c.Get(ctx, "k").Result()
		if err == nil && got != "v" {
			err = fmt.Errorf("GET k answered %q (the client still reads the old master)", got)
		}
		return err
	})
	if err != nil {
		t.Fatalf("the failover client never read the new master: %v", err)
	}
	switched := time.Now()
	t.Logf("the failover client read the new master %v after the promotion", switched.Sub(at).Round(time.Millisecond))

	s.Heal(t)
	healed := time.Now()
	err = waitFor(30*time.Second, func(ctx context.Context) error {
		if err := checkReplicaSynced(ctx, s.Server(old).Addr); err != nil {
			return err
		}
		got, err := direct.Get(ctx, "k").Result()
		if err == nil && got != "v" {
			err = fmt.Errorf("the old master holds %q", got)
		}
		return err
	})
	if err != nil {
		t.Fatalf("the old master never rejoined as a replica of %s: %v%s", promoted, err, s.logs(20))
	}
	t.Logf("the old master rejoined as a replica %v after the partition healed, discarding the write it took meanwhile",
		time.Since(healed).Round(time.Millisecond))
}

func TestSentinelPartitionedMasterRefusesWritesWithMinReplicasToWrite(t *testing.T) {
	s := StartSentinel(t, SentinelConfig{
		Partitionable: true,
		Replicas:      2, // so that the new master has a replica too
		ServerArgs:    []string{"--min-replicas-to-write", "1"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Wait(ctx, 2, 5*time.Second).Result(); err != nil || n != 2 {
		t.Fatalf("WAIT 2: %d replicas, %v", n, err)
	}
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	direct := s.Server(old).Client(t)

	s.Partition(t)
	cut := time.Now()
	err = waitFor(10*time.Second, func(ctx context.Context) error {
		err := direct.Set(ctx, "k", "lost", 0).Err()
		if err == nil {
			return errors.New("the partitioned old master took a write")
		}
		if !strings.HasPrefix(err.Error(), "NOREPLICAS") {
			return fmt.Errorf("SET: %w, want NOREPLICAS", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the partitioned old master did not refuse writes: %v", err)
	}
	t.Logf("the old master refused writes %v after the partition", time.Since(cut).Round(time.Millisecond))
	promoted, at := s.WaitPromoted(t, old, 30*time.Second)
	t.Logf("%s promoted %v after the partition", promoted, at.Sub(cut).Round(time.Millisecond))
	// The new master takes writes once the other replica replicates it.
	err = waitFor(20*time.Second, func(ctx context.Context) error {
		return c.Set(ctx, "k", "w", 0).Err()
	})
	if err != nil {
		t.Fatalf("the new master never took a write: %v%s", err, s.logs(20))
	}
	t.Logf("the failover client wrote to the new master %v after the promotion", time.Since(at).Round(time.Millisecond))
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "w" {
		t.Fatalf("GET k: %q, %v; want w", got, err)
	}
}
