package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mariadbWait bounds a local mariadbd's start (crash recovery included).
const mariadbWait = 60 * time.Second

// MariaDBConfig adjusts the server StartMariaDB starts. The zero value is
// a server with a row-based binary log and full row metadata.
type MariaDBConfig struct {
	// ServerID is the server's server_id (a replica or binlog reader
	// needs an id of its own).
	// default: 1
	ServerID int
	// Args are more mariadbd arguments ("--binlog-format=MIXED", ...),
	// passed after the ones StartMariaDB sets, so they override them.
	// default: none
	Args []string
}

// LocalMariaDB is one local mariadbd process started by StartMariaDB, with
// a datadir of its own. It can be killed and started again on the same
// port and datadir, as a crashed host that restarts (InnoDB and the binary
// log recover as after a power cut).
type LocalMariaDB struct {
	// Addr is the server's loopback address; it stays the same across
	// restarts. root has no password over TCP.
	Addr string
	// Host and Port are Addr's parts.
	Host string
	Port int
	// Dir holds the datadir, the socket and the error log.
	Dir string

	bin  string
	args []string

	mu     sync.Mutex   // protects cmd and waited
	cmd    *exec.Cmd    // nil while the server is down
	waited <-chan error // cmd.Wait's result
}

// StartMariaDB starts a mariadbd with --log-bin --binlog-format=ROW
// --binlog-row-metadata=FULL, a datadir made by mariadb-install-db, its
// socket and files in t.TempDir(), on a free loopback port, and waits until
// it answers; it creates the database `test`. The server is killed (and
// waited for) when the test ends. Without the binaries the test skips, or
// fails under CI (see Unreachable).
func StartMariaDB(t testing.TB, cfg MariaDBConfig) *LocalMariaDB {
	t.Helper()
	m, err := NewMariaDB(t.TempDir(), cfg)
	if m != nil {
		t.Cleanup(m.kill)
	}
	if errors.Is(err, errNoMariaDB) {
		Unreachable(t, "mariadbd (for a local MariaDB with a binlog)", err)
	}
	if err != nil {
		t.Fatalf("local mariadb: %v", err)
	}
	return m
}

// errNoMariaDB reports missing binaries.
var errNoMariaDB = errors.New("no MariaDB binaries")

// NewMariaDB starts a server as StartMariaDB does, with its files in dir,
// for a TestMain that shares one server among a package's tests: the
// caller stops it with Stop. Without the binaries the error says so;
// report it with Unreachable in each test that needs the server.
func NewMariaDB(dir string, cfg MariaDBConfig) (*LocalMariaDB, error) {
	bin, err := lookBin("mariadbd", "/usr/sbin/mariadbd")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoMariaDB, err)
	}
	install, err := lookBin("mariadb-install-db", "/usr/bin/mariadb-install-db")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoMariaDB, err)
	}
	ports, err := freeClusterPorts(1)
	if err != nil {
		return nil, fmt.Errorf("no free port: %v", err)
	}
	id := cfg.ServerID
	if id == 0 {
		id = 1
	}
	data := filepath.Join(dir, "data")
	// Small InnoDB files: the install takes ~2s and 20MB instead of 100MB.
	small := []string{"--innodb-log-file-size=16M", "--innodb-buffer-pool-size=64M"}
	out, err := exec.Command(install, append([]string{"--no-defaults", "--datadir=" + data,
		"--auth-root-authentication-method=normal", "--skip-test-db"}, small...)...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %v\n%s", err, out)
	}
	m := &LocalMariaDB{Host: "127.0.0.1", Port: ports[0], Dir: dir, bin: bin}
	m.Addr = m.Host + ":" + strconv.Itoa(m.Port)
	m.args = []string{"--no-defaults", "--datadir=" + data,
		"--socket=" + filepath.Join(dir, "mariadb.sock"),
		"--pid-file=" + filepath.Join(dir, "mariadb.pid"),
		"--log-error=" + filepath.Join(dir, "error.log"),
		"--port=" + strconv.Itoa(m.Port), "--bind-address=127.0.0.1", "--skip-name-resolve",
		"--log-bin=" + filepath.Join(data, "binlog"), "--binlog-format=ROW",
		"--binlog-row-metadata=FULL", "--server-id=" + strconv.Itoa(id),
		"--max-connections=500"}
	m.args = append(m.args, small...)
	if os.Geteuid() == 0 {
		m.args = append(m.args, "--user=root")
	}
	m.args = append(m.args, cfg.Args...)
	if err := m.start(); err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", m.DSN(""))
	if err == nil {
		_, err = db.Exec("CREATE DATABASE IF NOT EXISTS test")
		db.Close()
	}
	if err != nil {
		m.kill()
		return nil, fmt.Errorf("CREATE DATABASE test: %v", err)
	}
	return m, nil
}

// Stop kills the server (see Kill); for servers from NewMariaDB.
func (m *LocalMariaDB) Stop() { m.kill() }

func lookBin(name, fallback string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if _, err := os.Stat(fallback); err != nil {
		return "", fmt.Errorf("%s not on PATH nor at %s", name, fallback)
	}
	return fallback, nil
}

// DSN returns the go-sql-driver DSN of root on database db ("" for none).
func (m *LocalMariaDB) DSN(db string) string {
	return "root@tcp(" + m.Addr + ")/" + db
}

// DB returns a pool of the server's database `test`, closed when the test
// ends.
func (m *LocalMariaDB) DB(t testing.TB) *sql.DB {
	t.Helper()
	return m.open(t, "test")
}

func (m *LocalMariaDB) open(t testing.TB, db string) *sql.DB {
	t.Helper()
	pool, err := sql.Open("mysql", m.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	pool.SetMaxOpenConns(64)
	pool.SetMaxIdleConns(64)
	t.Cleanup(func() { pool.Close() })
	return pool
}

// ErrorLog returns the server's error log.
func (m *LocalMariaDB) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(m.Dir, "error.log"))
	return string(b)
}

// Kill kills the server with SIGKILL, as a crashed host. It returns once
// the process is gone; killing a stopped server does nothing.
func (m *LocalMariaDB) Kill(t testing.TB) {
	t.Helper()
	m.kill()
}

// Shutdown stops the server as an operator's restart does (SIGTERM: it
// closes its connections and flushes InnoDB), waiting up to a minute
// before killing it. MariaDB 10.11's crash recovery after a SIGKILL under
// writes sometimes aborts on an InnoDB assertion (trx0purge.cc), a server
// bug no client can help; tests of a restart, as opposed to a crash, use
// this.
func (m *LocalMariaDB) Shutdown(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.waited:
	case <-time.After(time.Minute):
		_ = m.cmd.Process.Kill()
		<-m.waited
	}
	m.cmd, m.waited = nil, nil
}

// Restart starts a killed server again on the same port and datadir and
// waits until it answers (after its crash recovery).
func (m *LocalMariaDB) Restart(t testing.TB) {
	t.Helper()
	m.kill()
	if err := m.start(); err != nil {
		t.Fatalf("local mariadb: restart: %v", err)
	}
}

func (m *LocalMariaDB) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cmd := exec.Command(m.bin, m.args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", m.bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	pool, err := sql.Open("mysql", m.DSN(""))
	if err != nil {
		return err
	}
	defer pool.Close()
	deadline := time.Now().Add(mariadbWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = pool.PingContext(ctx)
		cancel()
		if err == nil {
			// cmd.Wait runs in the goroutine above; kill waits for it.
			m.cmd = cmd
			m.waited = exited
			return nil
		}
		select {
		case werr := <-exited:
			m.cmd = nil
			return fmt.Errorf("%s exited (%v) before answering\n%s", m.bin, werr, m.ErrorLog())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			m.cmd = nil
			return fmt.Errorf("%s never answered within %v: %v\n%s", m.Addr, mariadbWait, err, m.ErrorLog())
		}
	}
}

func (m *LocalMariaDB) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.waited
	m.cmd, m.waited = nil, nil
}
