package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/faultproxy"
)

// Sentinel layout and bounds of the local Redis Sentinel setup.
const (
	sentinelCount  = 3
	sentinelQuorum = 2
	// sentinelMasterName is the name the sentinels monitor the master under.
	sentinelMasterName = "testenv"
	// sentinelWait bounds each wait of the start-up: the replicas syncing,
	// the sentinels finding the replicas and each other (they announce
	// themselves every 2s on the master's hello channel).
	sentinelWait = 30 * time.Second
	// defaultDownAfter is the sentinels' down-after-milliseconds unless
	// SentinelConfig says otherwise.
	defaultDownAfter = time.Second
	// sentinelFailoverTimeout is the sentinels' failover-timeout: how long
	// the promoted replica has to report itself a master before the
	// failover is aborted, and half the time before a sentinel tries the
	// same master's failover again. Small, so that a failed election is
	// retried within the test.
	sentinelFailoverTimeout = 2 * time.Second
	// sentinelTiltTrigger replaces Sentinel's TILT trigger (2s, not a
	// configuration directive: SENTINEL DEBUG tilt-trigger). A sentinel
	// whose timer runs that much late distrusts its clock and stops acting
	// for 30s (tilt-period); the shared 2-core machines this runs on stall
	// that long now and then (seen here: every sentinel entered TILT in the
	// middle of a failover, which then never completed).
	sentinelTiltTrigger = 10 * time.Second
)

// SentinelConfig adjusts the setup StartSentinel starts. The zero value is
// the configuration Sentinel uses.
type SentinelConfig struct {
	// DownAfter is the sentinels' down-after-milliseconds: how long the
	// master may be unreachable before a sentinel flags it down. A failover
	// takes about DownAfter plus 1–2s (agreeing on the master being down,
	// electing a leader sentinel, promoting the replica).
	// default: 1s
	DownAfter time.Duration
	// Partitionable puts the master behind a TCP proxy for the sentinels
	// and the replicas, while the clients of Client reach it directly, so
	// that Partition can cut the master off from the rest of its setup but
	// not from the application, as a network partition would.
	// default: false
	Partitionable bool
	// Replicas is the number of replicas of the master.
	// default: 1
	Replicas int
	// ServerArgs are more redis-server arguments for the master and the
	// replicas ("--min-replicas-to-write", "1", ...).
	// default: none
	ServerArgs []string
}

// LocalSentinel is a Redis master, its replicas and three sentinels
// monitoring them, all local processes started by StartSentinel. The
// master can be killed, as a crashed host, or cut off; the sentinels then
// promote a replica.
type LocalSentinel struct {
	// MasterName is the name the sentinels know the master by (the
	// FailoverOptions.MasterName of a client).
	MasterName string
	// SentinelAddrs are the sentinels' addresses (the
	// FailoverOptions.SentinelAddrs of a client).
	SentinelAddrs []string

	servers   []*LocalRedis // the master and the replicas, as started
	sentinels []*LocalRedis
	// proxy stands for the master as started, for the sentinels and the
	// replica (nil unless Partitionable): they know it by proxy.Addr().
	proxy *faultproxy.Proxy
}

// Sentinel starts a local Redis master, one replica of it and three
// sentinels (quorum 2) from the redis-server binary, on free loopback
// ports with their files in t.TempDir(), and returns them once the replica
// has synced and every sentinel knows it and the two other
// sentinels, so that a failover can start at once. The servers are killed
// (and waited for) when the test ends. Without the binary the test skips,
// or fails under CI (see Unreachable). Every caller gets a setup of its
// own.
func Sentinel(t testing.TB) *LocalSentinel {
	t.Helper()
	return StartSentinel(t, SentinelConfig{})
}

// StartSentinel starts a master, its replicas and three sentinels as
// Sentinel does, configured by cfg.
func StartSentinel(t testing.TB, cfg SentinelConfig) *LocalSentinel {
	t.Helper()
	downAfter := cfg.DownAfter
	if downAfter == 0 {
		downAfter = defaultDownAfter
	}
	if downAfter < 100*time.Millisecond {
		t.Fatalf("redis sentinel: DownAfter %v is below 100ms", downAfter)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Unreachable(t, "redis-server (for a local Redis Sentinel)", err)
	}
	s := &LocalSentinel{MasterName: sentinelMasterName}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("redis sentinel: "+format+"%s", append(args, s.logs(10))...)
	}

	replicas := cfg.Replicas
	if replicas == 0 {
		replicas = 1
	}
	// A replica syncs as soon as it asks (the default waits 5s for more
	// replicas), so that it holds the data early in a test.
	args := append([]string{"--repl-diskless-sync-delay", "0"}, cfg.ServerArgs...)
	master := StartRedis(t, RedisConfig{Args: args})
	// The address the sentinels and the replicas know the master by.
	known := master.Addr
	if cfg.Partitionable {
		p, err := faultproxy.Start(master.Addr)
		if err != nil {
			t.Fatalf("redis sentinel: proxy of the master: %v", err)
		}
		t.Cleanup(func() { p.Close() })
		s.proxy, known = p, p.Addr()
	}
	mhost, mport, _ := net.SplitHostPort(known)
	s.servers = []*LocalRedis{master}
	for range replicas {
		replica := StartRedis(t, RedisConfig{Args: append(slices.Clip(args), "--replicaof", mhost, mport)})
		s.servers = append(s.servers, replica)
		err = waitFor(sentinelWait, func(ctx context.Context) error {
			return checkReplicaSynced(ctx, replica.Addr)
		})
		if err != nil {
			fail("the replica %s never synced with %s within %v: %v", replica.Addr, master.Addr, sentinelWait, err)
		}
	}

	ports, err := freeClusterPorts(sentinelCount)
	if err != nil {
		t.Fatalf("redis sentinel: no free ports: %v", err)
	}
	for _, port := range ports {
		r := &LocalRedis{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: t.TempDir(), bin: bin}
		// Sentinels rewrite their configuration file (the replicas and
		// sentinels they discover, every failover): it must be writable.
		conf := filepath.Join(r.Dir, "sentinel.conf")
		text := strings.Join([]string{
			"port " + strconv.Itoa(port),
			"bind 127.0.0.1",
			"dir " + r.Dir,
			"sentinel resolve-hostnames yes",
			"sentinel announce-ip 127.0.0.1",
			fmt.Sprintf("sentinel monitor %s %s %s %d", s.MasterName, mhost, mport, sentinelQuorum),
			fmt.Sprintf("sentinel down-after-milliseconds %s %d", s.MasterName, downAfter.Milliseconds()),
			fmt.Sprintf("sentinel failover-timeout %s %d", s.MasterName, sentinelFailoverTimeout.Milliseconds()),
			fmt.Sprintf("sentinel parallel-syncs %s 1", s.MasterName),
		}, "\n") + "\n"
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		r.args = []string{conf, "--sentinel"}
		t.Cleanup(r.kill)
		s.sentinels = append(s.sentinels, r)
		s.SentinelAddrs = append(s.SentinelAddrs, r.Addr)
		if err := r.start(); err != nil {
			fail("%v", err)
		}
		err := waitFor(sentinelWait, func(ctx context.Context) error {
			c := redis.NewSentinelClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
			defer c.Close()
			return c.Process(ctx, redis.NewStatusCmd(ctx, "SENTINEL", "DEBUG", "tilt-trigger", sentinelTiltTrigger.Milliseconds()))
		})
		if err != nil {
			fail("sentinel %s: SENTINEL DEBUG tilt-trigger: %v", r.Addr, err)
		}
	}

	// Every sentinel sees the master up, the replicas synced and the other
	// sentinels: without them it could not be elected to fail over.
	for _, a := range s.SentinelAddrs {
		err := waitFor(sentinelWait, func(ctx context.Context) error {
			return s.checkSentinelReady(ctx, a)
		})
		if err != nil {
			fail("sentinel %s not ready within %v: %v", a, sentinelWait, err)
		}
	}
	return s
}

// checkReplicaSynced returns nil when the server at addr is a replica
// whose link to its master is up.
func checkReplicaSynced(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "role:slave") || !strings.Contains(info, "master_link_status:up") {
		return errors.New("not a replica with its link to the master up")
	}
	return nil
}

// checkSentinelReady returns nil when the sentinel at addr sees the master
// up, every replica up and synced, and every other sentinel.
func (s *LocalSentinel) checkSentinelReady(ctx context.Context, addr string) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	m, err := c.Master(ctx, s.MasterName).Result()
	if err != nil {
		return err
	}
	if m["flags"] != "master" || m["num-slaves"] != strconv.Itoa(len(s.servers)-1) || m["num-other-sentinels"] != strconv.Itoa(sentinelCount-1) {
		return fmt.Errorf("master flags %q, %s replicas, %s other sentinels", m["flags"], m["num-slaves"], m["num-other-sentinels"])
	}
	replicas, err := c.Replicas(ctx, s.MasterName).Result()
	if err != nil {
		return err
	}
	ok := map[string]bool{}
	for _, r := range replicas {
		if r["flags"] == "slave" && r["master-link-status"] == "ok" {
			ok[net.JoinHostPort(r["ip"], r["port"])] = true
		}
	}
	for _, r := range s.servers[1:] {
		if !ok[r.Addr] {
			return fmt.Errorf("the replica %s is not known up and synced: %v", r.Addr, replicas)
		}
	}
	return nil
}

// Client returns a new Sentinel-backed client of the master (a
// redis.NewFailoverClient with ContextTimeoutEnabled), closed when the test
// ends. Every call returns a separate client, as a separate process would
// have.
//
// With Partitionable, the client dials the first master directly where
// the sentinels name its proxy: Partition does not cut it off.
func (s *LocalSentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	opts := &redis.FailoverOptions{
		MasterName:            s.MasterName,
		SentinelAddrs:         s.SentinelAddrs,
		ContextTimeoutEnabled: true,
	}
	if s.proxy != nil {
		proxied, direct := s.proxy.Addr(), s.servers[0].Addr
		opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == proxied {
				addr = direct
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
	c := redis.NewFailoverClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// Servers returns the master and the replicas as they were started (the
// roles change with a failover: see Master).
func (s *LocalSentinel) Servers() []*LocalRedis { return append([]*LocalRedis(nil), s.servers...) }

// Server returns the server (master or replica) at addr, or nil. addr may
// be the address the sentinels know the first master by (its proxy, with
// Partitionable).
func (s *LocalSentinel) Server(addr string) *LocalRedis {
	if s.proxy != nil && addr == s.proxy.Addr() {
		return s.servers[0]
	}
	for _, r := range s.servers {
		if r.Addr == addr {
			return r
		}
	}
	return nil
}

// Master returns the address of the master as the sentinels report it
// (SENTINEL GET-MASTER-ADDR-BY-NAME), or an error when a live sentinel
// cannot be asked or they disagree.
func (s *LocalSentinel) Master(ctx context.Context) (string, error) {
	master := ""
	for _, r := range s.sentinels {
		if !r.alive() {
			continue
		}
		c := redis.NewSentinelClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
		c.Close()
		if err != nil {
			return "", fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME: %w", r.Addr, err)
		}
		if len(hp) != 2 {
			return "", fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME answered %q", r.Addr, hp)
		}
		a := net.JoinHostPort(hp[0], hp[1])
		if master != "" && a != master {
			return "", fmt.Errorf("the sentinels disagree: %s and %s", master, a)
		}
		master = a
	}
	if master == "" {
		return "", errors.New("no live sentinel")
	}
	return master, nil
}

// KillMaster kills the current master (as the sentinels report it) with
// SIGKILL, as a crashed host: it neither saves nor tells its replica or its
// clients, and whatever it acknowledged but had not yet sent to its replica
// is lost. It returns the master's address once the process is gone.
func (s *LocalSentinel) KillMaster(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.Master(ctx)
	if err != nil {
		t.Fatalf("redis sentinel: %v", err)
	}
	r := s.Server(addr)
	if r == nil || !r.alive() {
		t.Fatalf("redis sentinel: the master %s is not a live server of the setup", addr)
	}
	r.Kill(t)
	return addr
}

// Partition cuts the first master off from the sentinels and the replicas
// (its proxy refuses connections and resets the open ones); the clients of
// Client still reach it. It needs Partitionable. The sentinels then
// promote a replica while the old master goes on accepting writes from
// the clients that have not learnt of the promotion: what it accepts is
// lost, as it never reaches the new master (unless the servers run with
// min-replicas-to-write: then the old master, left without replicas,
// refuses writes).
func (s *LocalSentinel) Partition(t testing.TB) {
	t.Helper()
	if s.proxy == nil {
		t.Fatal("redis sentinel: Partition needs SentinelConfig.Partitionable")
	}
	if err := s.proxy.Set(faultproxy.Refuse, 0); err != nil {
		t.Fatalf("redis sentinel: partition: %v", err)
	}
}

// Heal ends a Partition: the sentinels reach the old master again and,
// after a failover, turn it into a replica of the new master (some seconds
// later: a sentinel waits 4 hello periods, 8s, before it does), which
// discards what it accepted meanwhile.
func (s *LocalSentinel) Heal(t testing.TB) {
	t.Helper()
	if s.proxy == nil {
		t.Fatal("redis sentinel: Heal needs SentinelConfig.Partitionable")
	}
	if err := s.proxy.Set(faultproxy.Pass, 0); err != nil {
		t.Fatalf("redis sentinel: heal: %v", err)
	}
}

// WaitPromoted polls (every few milliseconds, for at most within) until a
// sentinel reports a master other than old and that server says it is a
// master; it returns the new master and when that was first seen. After
// old was killed, that is when the failover completed: the leader sentinel
// has switched to the promoted replica and published +switch-master. The
// other sentinels learn it from the leader's hello messages (every 2s), so
// Master may report old for up to that long after, and so may a client
// that asks one of them.
func (s *LocalSentinel) WaitPromoted(t testing.TB, old string, within time.Duration) (string, time.Time) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		addr, err := s.checkPromoted(old)
		if err == nil {
			return addr, time.Now()
		}
		last = err
		time.Sleep(5 * time.Millisecond) // polling the servers' state; nothing to block on
	}
	t.Fatalf("redis sentinel: no server was promoted in place of %s within %v: %v%s", old, within, last, s.logs(30))
	return "", time.Time{}
}

// WaitMaster polls (every few milliseconds, for at most within) until every
// live sentinel reports addr as the master, and returns when that was first
// seen. After a promotion the sentinels other than the leader learn of it
// from the leader's hello messages (every 2s); a client that asks one of
// them before then is sent to the old master.
func (s *LocalSentinel) WaitMaster(t testing.TB, addr string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		got, err := s.Master(ctx)
		cancel()
		if err == nil && got == addr {
			return time.Now()
		}
		if err == nil {
			err = fmt.Errorf("the sentinels report %s", got)
		}
		last = err
		time.Sleep(5 * time.Millisecond) // polling the sentinels' state; nothing to block on
	}
	t.Fatalf("redis sentinel: the sentinels did not all report %s as the master within %v: %v%s", addr, within, last, s.logs(30))
	return time.Time{}
}

// checkPromoted returns the new master when a live sentinel reports one
// other than old and it reports role:master.
func (s *LocalSentinel) checkPromoted(old string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var errs []error
	for _, r := range s.sentinels {
		if !r.alive() {
			continue
		}
		c := redis.NewSentinelClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
		c.Close()
		if err != nil || len(hp) != 2 {
			errs = append(errs, fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME: %q, %v", r.Addr, hp, err))
			continue
		}
		addr := net.JoinHostPort(hp[0], hp[1])
		if addr == old {
			errs = append(errs, fmt.Errorf("sentinel %s still reports %s", r.Addr, old))
			continue
		}
		c2 := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		info, err := c2.Info(ctx, "replication").Result()
		c2.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		if !strings.Contains(info, "role:master") {
			errs = append(errs, fmt.Errorf("%s is not a master yet", addr))
			continue
		}
		return addr, nil
	}
	return "", errors.Join(errs...)
}

// logs returns the last n lines of every process's log.
func (s *LocalSentinel) logs(n int) string {
	var logs strings.Builder
	show := func(what string, r *LocalRedis) {
		b, _ := os.ReadFile(filepath.Join(r.Dir, "server.log"))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(&logs, "\n--- %s %s (last lines)\n%s", what, r.Addr, strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
	for _, r := range s.servers {
		show("redis-server", r)
	}
	for _, r := range s.sentinels {
		show("sentinel", r)
	}
	return logs.String()
}

// alive reports whether the server's process is running (it was started
// and not killed since).
func (r *LocalRedis) alive() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}
