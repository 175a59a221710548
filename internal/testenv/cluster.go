package testenv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster layout and bounds of the local Redis Cluster.
const (
	clusterMasters  = 3
	clusterReplicas = 1 // per master
	// clusterWait bounds each wait of the start-up: the servers answering,
	// the cluster forming, every slot being served.
	clusterWait = 20 * time.Second
)

// Cluster starts a local Redis Cluster of 3 masters and 3 replicas from
// the redis-server and redis-cli binaries, on free loopback ports with
// their files in t.TempDir(), and returns a client of it (with
// ContextTimeoutEnabled). The client is closed and the servers are killed
// (and waited for) when the test ends. Without the binaries the test skips,
// or fails under CI (see Unreachable). Every caller gets a cluster of its
// own: start one per top-level test and share it among subtests.
func Cluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	server, err := exec.LookPath("redis-server")
	if err != nil {
		Unreachable(t, "redis-server (for a local Redis Cluster)", err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		Unreachable(t, "redis-cli (for a local Redis Cluster)", err)
	}

	n := clusterMasters * (1 + clusterReplicas)
	ports, err := freeClusterPorts(n)
	if err != nil {
		t.Fatalf("redis cluster: no free ports: %v", err)
	}
	root := t.TempDir()
	addrs := make([]string, n)
	for i, port := range ports {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(port)
		dir := filepath.Join(root, strconv.Itoa(port))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, "server.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(server,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
			"--save", "", "--appendonly", "no", "--dir", dir)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("redis cluster: starting %s: %v", server, err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			logf.Close()
		})
	}
	// fail reports what went wrong with the end of every server's log.
	fail := func(format string, args ...any) {
		t.Helper()
		var logs strings.Builder
		for _, port := range ports {
			b, _ := os.ReadFile(filepath.Join(root, strconv.Itoa(port), "server.log"))
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			fmt.Fprintf(&logs, "\n--- redis-server :%d (last lines)\n%s", port, strings.Join(lines[max(0, len(lines)-8):], "\n"))
		}
		t.Fatalf("redis cluster: "+format+"%s", append(args, logs.String())...)
	}

	// Each node answers.
	for _, a := range addrs {
		err := waitFor(clusterWait, func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			defer c.Close()
			return c.Ping(ctx).Err()
		})
		if err != nil {
			fail("%s never answered PING within %v: %v", a, clusterWait, err)
		}
	}

	// The cluster is created (redis-cli waits until the nodes agree on
	// the configuration).
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(clusterReplicas), "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		fail("redis-cli --cluster create: %v\n%s", err, out)
	}

	// Every node sees the cluster ok.
	for _, a := range addrs {
		err := waitFor(clusterWait, func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			defer c.Close()
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return errors.New("cluster_state is not ok")
			}
			return nil
		})
		if err != nil {
			fail("%s: CLUSTER INFO never said cluster_state:ok within %v: %v", a, clusterWait, err)
		}
	}

	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() }) // registered last: runs before the kills
	// The client reaches every master: keys of many slots can be written
	// and read back (a node that does not serve its slots yet answers
	// CLUSTERDOWN or MOVED until it does).
	err = waitFor(clusterWait, func(ctx context.Context) error {
		rdb.ReloadState(ctx)
		for i := range 32 {
			k := "testenv:cluster:probe:" + strconv.Itoa(i)
			if err := rdb.Set(ctx, k, i, time.Minute).Err(); err != nil {
				return fmt.Errorf("SET %s: %w", k, err)
			}
			if v, err := rdb.Get(ctx, k).Int(); err != nil || v != i {
				return fmt.Errorf("GET %s: %d, %v", k, v, err)
			}
			if err := rdb.Del(ctx, k).Err(); err != nil {
				return fmt.Errorf("DEL %s: %w", k, err)
			}
		}
		masters, err := clusterMasterCount(ctx, rdb)
		if err != nil {
			return err
		}
		if masters != clusterMasters {
			return fmt.Errorf("the client sees %d masters, want %d", masters, clusterMasters)
		}
		return nil
	})
	if err != nil {
		fail("the cluster client could not use every slot within %v: %v", clusterWait, err)
	}
	return rdb
}

// clusterMasterCount counts the masters the client's view of the cluster has.
func clusterMasterCount(ctx context.Context, rdb *redis.ClusterClient) (int, error) {
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	for _, s := range slots {
		if len(s.Nodes) > 0 {
			seen[s.Nodes[0].Addr] = true
		}
	}
	return len(seen), nil
}

// waitFor calls f, each call bounded by a second, until it returns nil or
// within has passed; then it returns f's last error.
func waitFor(within time.Duration, f func(ctx context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeClusterPorts returns n distinct loopback ports P that are free, and
// whose cluster bus ports P+10000 are free too.
func freeClusterPorts(n int) ([]int, error) {
	var ports []int
	taken := map[int]bool{}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("found %d of %d", len(ports), n)
		}
		p := 20000 + rand.IntN(25000)
		if taken[p] || taken[p+10000] || !portFree(p) || !portFree(p+10000) {
			continue
		}
		taken[p], taken[p+10000] = true, true
		ports = append(ports, p)
	}
	return ports, nil
}

// portFree reports whether 127.0.0.1:port can be listened on now.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
