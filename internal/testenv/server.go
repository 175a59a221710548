package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// RedisConfig adjusts the server StartRedis starts. The zero value is a
// server that keeps nothing on disk.
type RedisConfig struct {
	// AppendOnly turns the append-only file on (appendfsync everysec
	// unless Args say otherwise), so that a restart keeps what was
	// acknowledged up to about a second before the kill.
	// default: false
	AppendOnly bool
	// Args are more redis-server arguments ("--maxmemory-policy",
	// "allkeys-lru", ...), passed after the ones StartRedis sets.
	// default: none
	Args []string
}

// LocalRedis is one local redis-server process started by StartRedis. It
// can be killed and started again on the same port and directory, as a
// crashed host that restarts.
type LocalRedis struct {
	// Addr is the server's loopback address; it stays the same across
	// restarts.
	Addr string
	// Dir is the server's working directory (its AOF and log).
	Dir string

	bin  string
	args []string

	mu  sync.Mutex // protects cmd and log
	cmd *exec.Cmd  // nil while the server is down
	log *os.File
}

// StartRedis starts a redis-server on a free loopback port, with its files
// in t.TempDir(), and waits until it answers. It is killed (and waited for)
// when the test ends. Without the binary the test skips, or fails under CI
// (see Unreachable).
func StartRedis(t testing.TB, cfg RedisConfig) *LocalRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Unreachable(t, "redis-server (for a local Redis)", err)
	}
	ports, err := freeClusterPorts(1)
	if err != nil {
		t.Fatalf("local redis: no free port: %v", err)
	}
	port := strconv.Itoa(ports[0])
	r := &LocalRedis{Addr: "127.0.0.1:" + port, Dir: t.TempDir(), bin: bin}
	appendonly := "no"
	if cfg.AppendOnly {
		appendonly = "yes"
	}
	r.args = append([]string{
		"--port", port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", appendonly, "--appendfsync", "everysec",
		"--dir", r.Dir,
	}, cfg.Args...)
	t.Cleanup(func() { r.kill() })
	if err := r.start(); err != nil {
		t.Fatalf("local redis: %v", err)
	}
	return r
}

// Client returns a new client of the server (ContextTimeoutEnabled),
// closed when the test ends.
func (r *LocalRedis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// Kill kills the server with SIGKILL, as a crashed host: it saves nothing
// beyond what its append-only file already has. It returns once the
// process is gone; killing a stopped server does nothing.
func (r *LocalRedis) Kill(t testing.TB) {
	t.Helper()
	r.kill()
}

// Restart starts a killed server again on the same port and directory and
// waits until it answers (it loads its append-only file first).
func (r *LocalRedis) Restart(t testing.TB) {
	t.Helper()
	r.kill()
	if err := r.start(); err != nil {
		t.Fatalf("local redis: restart: %v", err)
	}
}

func (r *LocalRedis) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(r.Dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.bin, r.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", r.bin, err)
	}
	r.cmd, r.log = cmd, logf
	err = waitFor(clusterWait, func(ctx context.Context) error {
		c := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
		defer c.Close()
		return c.Ping(ctx).Err()
	})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(r.Dir, "server.log"))
		return fmt.Errorf("%s never answered PING within %v: %v\n%s", r.Addr, clusterWait, err, b)
	}
	return nil
}

func (r *LocalRedis) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.log.Close()
	r.cmd, r.log = nil, nil
}
