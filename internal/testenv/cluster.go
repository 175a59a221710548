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
	"sync"
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
	// defaultNodeTimeout is the servers' cluster-node-timeout unless
	// ClusterConfig says otherwise.
	defaultNodeTimeout = 2 * time.Second
)

// ClusterConfig adjusts the local cluster StartCluster starts. The zero
// value is the configuration Cluster uses.
type ClusterConfig struct {
	// NodeTimeout is the servers' cluster-node-timeout: how long a master
	// may be unreachable before the others flag it failing and its replica
	// starts an election. A failover takes about NodeTimeout plus 0.5–1s.
	// default: 2s
	NodeTimeout time.Duration
}

// LocalCluster is a Redis Cluster of local redis-server processes started
// by StartCluster. Its servers can be killed one by one, as crashed hosts.
type LocalCluster struct {
	// Client is a client of the cluster (ContextTimeoutEnabled), closed
	// when the test ends.
	Client *redis.ClusterClient
	addrs  []string
	root   string // the servers' directories

	mu    sync.Mutex // protects procs
	procs map[string]*exec.Cmd
}

// Cluster starts a local Redis Cluster of 3 masters and 3 replicas from
// the redis-server and redis-cli binaries, on free loopback ports with
// their files in t.TempDir(), and returns a client of it (with
// ContextTimeoutEnabled). The client is closed and the servers are killed
// (and waited for) when the test ends. Without the binaries the test skips,
// or fails under CI (see Unreachable). Every caller gets a cluster of its
// own: start one per top-level test and share it among subtests.
func Cluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	return StartCluster(t, ClusterConfig{}).Client
}

// StartCluster starts a local Redis Cluster of 3 masters and 3 replicas as
// Cluster does, configured by cfg, and returns it with its servers, so
// that a test can kill one.
func StartCluster(t testing.TB, cfg ClusterConfig) *LocalCluster {
	t.Helper()
	nodeTimeout := cfg.NodeTimeout
	if nodeTimeout == 0 {
		nodeTimeout = defaultNodeTimeout
	}
	if nodeTimeout < 100*time.Millisecond {
		t.Fatalf("redis cluster: NodeTimeout %v is below 100ms", nodeTimeout)
	}
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
	lc := &LocalCluster{addrs: addrs, root: root, procs: make(map[string]*exec.Cmd, n)}
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
			"--cluster-node-timeout", strconv.FormatInt(nodeTimeout.Milliseconds(), 10),
			"--save", "", "--appendonly", "no", "--dir", dir,
			// A replica syncs as soon as it asks (the default waits 5s for
			// more replicas), so that it can take over early in a test.
			"--repl-diskless-sync-delay", "0")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("redis cluster: starting %s: %v", server, err)
		}
		lc.procs[addrs[i]] = cmd
		t.Cleanup(func() {
			lc.stop(cmd)
			logf.Close()
		})
	}
	// fail reports what went wrong with the end of every server's log.
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("redis cluster: "+format+"%s", append(args, lc.logs(8))...)
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

	// Every replica has synced with its master: until then it holds no
	// data and would not take over from a failed master.
	for _, a := range addrs {
		err := waitFor(clusterWait, func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			defer c.Close()
			info, err := c.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if strings.Contains(info, "role:slave") && !strings.Contains(info, "master_link_status:up") {
				return errors.New("the replica's link to its master is not up")
			}
			return nil
		})
		if err != nil {
			fail("%s: never synced with its master within %v: %v", a, clusterWait, err)
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
	lc.Client = rdb
	return lc
}

// logs returns the last n lines of every server's log.
func (c *LocalCluster) logs(n int) string {
	var logs strings.Builder
	for _, a := range c.addrs {
		_, port, _ := strings.Cut(a, ":")
		b, _ := os.ReadFile(filepath.Join(c.root, port, "server.log"))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(&logs, "\n--- redis-server %s (last lines)\n%s", a, strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
	return logs.String()
}

// Addrs returns the addresses of the cluster's servers, live or killed.
func (c *LocalCluster) Addrs() []string { return append([]string(nil), c.addrs...) }

// Kill kills the server at addr with SIGKILL, as a crashed host: it
// neither saves nor tells its replica or its clients, and whatever it
// acknowledged but had not yet sent to its replica is lost. It returns once
// the process is gone.
func (c *LocalCluster) Kill(t testing.TB, addr string) {
	t.Helper()
	c.mu.Lock()
	cmd := c.procs[addr]
	c.mu.Unlock()
	if cmd == nil {
		t.Fatalf("redis cluster: no server at %s", addr)
	}
	if !c.stop(cmd) {
		t.Fatalf("redis cluster: the server at %s was already killed", addr)
	}
}

// stop kills cmd and waits for it, once; it reports whether it did.
func (c *LocalCluster) stop(cmd *exec.Cmd) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, p := range c.procs {
		if p == cmd {
			delete(c.procs, a)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return true
		}
	}
	return false
}

// Alive reports whether the server at addr has not been killed.
func (c *LocalCluster) Alive(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[addr] != nil
}

// ClusterNode is one line of CLUSTER NODES.
type ClusterNode struct {
	ID       string
	Addr     string // host:port
	Master   bool
	MasterID string // the master's ID, for a replica
	// Failing is set while the node is flagged fail or fail? (suspected).
	Failing bool
	// Slots counts the hash slots the node serves.
	Slots int
}

// Nodes returns the cluster's nodes as the live server at from sees them
// (any live server when from is empty).
func (c *LocalCluster) Nodes(ctx context.Context, from string) ([]ClusterNode, error) {
	if from == "" {
		for _, a := range c.addrs {
			if c.Alive(a) {
				from = a
				break
			}
		}
	}
	nc := redis.NewClient(&redis.Options{Addr: from, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer nc.Close()
	out, err := nc.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES at %s: %w", from, err)
	}
	return parseClusterNodes(out)
}

// parseClusterNodes reads CLUSTER NODES's reply:
// <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
func parseClusterNodes(out string) ([]ClusterNode, error) {
	var nodes []ClusterNode
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES: short line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := ClusterNode{ID: f[0], Addr: addr}
		for flag := range strings.SplitSeq(f[2], ",") {
			switch flag {
			case "master":
				n.Master = true
			case "fail", "fail?":
				n.Failing = true
			}
		}
		if f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			if !isRange {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("CLUSTER NODES: slot range %q", r)
			}
			n.Slots += b - a + 1
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// ReplicaOf returns the address of master's replica.
func (c *LocalCluster) ReplicaOf(ctx context.Context, master string) (string, error) {
	nodes, err := c.Nodes(ctx, master)
	if err != nil {
		return "", err
	}
	id := ""
	for _, n := range nodes {
		if n.Addr == master {
			id = n.ID
		}
	}
	for _, n := range nodes {
		if id != "" && n.MasterID == id {
			return n.Addr, nil
		}
	}
	return "", fmt.Errorf("%s has no replica", master)
}

// WaitMaster polls the live servers (every few milliseconds, for at most
// within) until each of them sees addr as a master serving slots, not
// failing, and says cluster_state:ok; it returns when that was first seen.
// After a master was killed, addr is its replica, and the time is when the
// failover completed as far as the cluster is concerned (clients still
// have to learn the new slot map).
func (c *LocalCluster) WaitMaster(t testing.TB, addr string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		err := c.checkMaster(addr)
		if err == nil {
			return time.Now()
		}
		last = err
		time.Sleep(5 * time.Millisecond) // polling the servers' state; nothing to block on
	}
	var nodes strings.Builder
	for _, a := range c.addrs {
		if c.Alive(a) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ns, err := c.Nodes(ctx, a)
			cancel()
			fmt.Fprintf(&nodes, "\n--- CLUSTER NODES at %s: %+v %v", a, ns, err)
		}
	}
	t.Fatalf("redis cluster: %s did not become a master within %v: %v%s%s", addr, within, last, nodes.String(), c.logs(20))
	return time.Time{}
}

// checkMaster returns nil when every live server sees addr as a master
// with slots and the cluster as ok.
func (c *LocalCluster) checkMaster(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	for _, a := range c.addrs {
		if !c.Alive(a) {
			continue
		}
		nodes, err := c.Nodes(ctx, a)
		if err != nil {
			return err
		}
		ok := false
		for _, n := range nodes {
			if n.Addr == addr {
				ok = n.Master && !n.Failing && n.Slots > 0
			}
		}
		if !ok {
			return fmt.Errorf("%s does not see %s as a master with slots yet", a, addr)
		}
		nc := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1, ContextTimeoutEnabled: true})
		info, err := nc.ClusterInfo(ctx).Result()
		nc.Close()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state is not ok", a)
		}
	}
	return nil
}

// clusterMasterCount counts the masters the client's view of the cluster
// has: the shards that serve slots.
func clusterMasterCount(ctx context.Context, rdb *redis.ClusterClient) (int, error) {
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range shards {
		if len(s.Slots) > 0 {
			n++
		}
	}
	return n, nil
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
