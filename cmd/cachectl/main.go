// Command cachectl answers the 2 a.m. questions about a cache built with
// github.com/f4df6ac3/cache: what exactly is in this entry, does it agree
// with the database, are many keys about to expire together, is Redis
// healthy, and how do I get rid of a wrong entry safely.
//
// Install:
//
//	go install github.com/f4df6ac3/cache/cmd/cachectl@latest
//
// or, from a checkout of the repository (its own version, local changes
// included), at the repository's root:
//
//	go install ./cmd/cachectl
//
// Either puts the binary in $(go env GOBIN), by default $(go env GOPATH)/bin
// (~/go/bin): put that directory on your PATH, or run go build -o cachectl
// ./cmd/cachectl for a binary in the current directory.
//
// Usage:
//
//	cachectl [-redis ADDR[,ADDR...]] [-cluster] [-json] [-timeout D] COMMAND [flags] ARGS
//
//	inspect KEY                       the decoded entry at the full Redis key
//	compare KEY -dsn DSN -query Q -arg A ...
//	                                  the entry beside the MySQL row
//	ttl PATTERN [-sample N]           TTL histogram; warns on synchronized expiry
//	health [-prefix P] [-dsn DSN]     latency, eviction policy, hit ratio, memory;
//	                                  the in-process tier streams by key prefix;
//	                                  the binlog relays publishing under prefix P
//	                                  and, with -dsn, their checkpoints and leader
//	                                  locks and the outbox's backlog
//	invalidate [-tombstone D] [-keep-stale] [-force] KEY ...
//	                                  turn entries into tombstones (library semantics);
//	                                  says ABSENT for a key that held no entry
//	warm                              dry run: which keys read from stdin are cold
//
// KEY is always the full Redis key: Options.Prefix + loader name + ":" + key,
// e.g. "app:user#2:42". Flags may follow the arguments. -redis defaults to
// $CACHE_REDIS_ADDR, else 127.0.0.1:6379. Every command takes -json for
// machine-readable output.
//
// Redis Cluster: give several comma-separated seed addresses, or -cluster
// with one. Keys are then routed to the master that serves them; ttl
// SCANs every master, and health reports on every master.
//
// Exit status: 0 the command ran (warnings included), 1 an error (Redis or
// MySQL unreachable, a key that is not a cache entry), 2 a usage error, 3
// compare's verdict is DIFFER (the entry and the row disagree).
//
// compare runs its -query in a read-only transaction: a pasted statement
// that writes fails instead of changing the database.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Exit codes.
const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitDiffer = 3 // compare: the entry and the row differ
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what every command gets: the global flags, a Redis client (a
// *redis.Client, or a *redis.ClusterClient for a cluster) and the output
// streams.
type env struct {
	rdb     redis.UniversalClient
	json    bool
	timeout time.Duration
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

// runFunc runs a command with its positional arguments.
type runFunc func(ctx context.Context, e *env, args []string) error

// command is one subcommand. flags adds its own flags to fs; do runs it
// with the positional arguments.
type command struct {
	name    string
	args    string // synopsis of the arguments
	summary string
	help    string // extra paragraph for "cachectl help COMMAND"
	minArgs int
	maxArgs int // -1: unbounded
	flags   func(fs *flag.FlagSet) runFunc
}

var commands = []*command{inspectCmd, compareCmd, ttlCmd, healthCmd, invalidateCmd, warmCmd}

// stdin is where warm reads keys; tests replace it.
var stdin io.Reader = os.Stdin

// usageError is an error in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// run is the whole program: it parses args (without the program name), runs
// one command and returns the exit status. Tests call it in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("cachectl", flag.ContinueOnError)
	global.SetOutput(stderr)
	defAddr := os.Getenv("CACHE_REDIS_ADDR")
	if defAddr == "" {
		defAddr = "127.0.0.1:6379"
	}
	addr := global.String("redis", defAddr, "Redis `address` (host:port; env CACHE_REDIS_ADDR); several, comma-separated, for a cluster")
	cluster := global.Bool("cluster", false, "Redis Cluster: -redis names seed nodes (implied by several addresses)")
	jsonOut := global.Bool("json", false, "machine-readable JSON output")
	timeout := global.Duration("timeout", 5*time.Second, "bound of the whole command")
	global.Usage = func() { mainUsage(stderr, global) }
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	rest := global.Args()
	if len(rest) == 0 {
		mainUsage(stderr, global)
		return exitUsage
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			if c := lookup(rest[1]); c != nil {
				fs := newFlagSet(c, stderr, new(bool))
				c.flags(fs)
				fs.SetOutput(stdout)
				fs.Usage()
				return exitOK
			}
		}
		mainUsage(stdout, global)
		return exitOK
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(stderr, "cachectl: unknown command %q\n", name)
		mainUsage(stderr, global)
		return exitUsage
	}
	cmdJSON := new(bool)
	fs := newFlagSet(c, stderr, cmdJSON)
	do := c.flags(fs)
	pos, err := parseInterleaved(fs, rest[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if len(pos) < c.minArgs || (c.maxArgs >= 0 && len(pos) > c.maxArgs) {
		fmt.Fprintf(stderr, "cachectl %s: wrong number of arguments\n", c.name)
		fs.Usage()
		return exitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "cachectl: -timeout must be positive")
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var addrs []string
	for a := range strings.SplitSeq(*addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		fmt.Fprintln(stderr, "cachectl: -redis names no address")
		return exitUsage
	}
	rdb := newClient(addrs, *cluster)
	defer rdb.Close()
	e := &env{rdb: rdb, json: *jsonOut || *cmdJSON, timeout: *timeout, stdin: stdin, stdout: stdout, stderr: stderr}
	if err := do(ctx, e, pos); err != nil {
		if errors.Is(err, errDiffer) {
			return exitDiffer
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "cachectl %s: %v\n", c.name, err)
			fs.Usage()
			return exitUsage
		}
		fmt.Fprintf(stderr, "cachectl %s: %v\n", c.name, err)
		return exitError
	}
	return exitOK
}

// newClient returns a client of the Redis at addrs: a cluster client when
// there are several or cluster is set, else a plain one. Both bound every
// call by the command's context, and neither retries: a diagnosis tool
// reports failures, it does not hide them (a cluster client still follows
// MOVED and ASK redirections).
func newClient(addrs []string, cluster bool) redis.UniversalClient {
	if cluster || len(addrs) > 1 {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 addrs,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			PoolSize:              4,
		})
	}
	return redis.NewClient(&redis.Options{
		Addr:                  addrs[0],
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		PoolSize:              4,
	})
}

// forEachNode calls fn with each master of a cluster client in turn (one
// at a time: fn needs no locking), or once with any other client.
func forEachNode(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, node redis.UniversalClient, addr string) error) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		addr := ""
		if c, ok := rdb.(*redis.Client); ok {
			addr = c.Options().Addr
		}
		return fn(ctx, rdb, addr)
	}
	var masters []*redis.Client
	var mu sync.Mutex // ForEachMaster calls on many goroutines
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu.Lock()
		masters = append(masters, m)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis cluster: %w", err)
	}
	slices.SortFunc(masters, func(a, b *redis.Client) int { return strings.Compare(a.Options().Addr, b.Options().Addr) })
	for _, m := range masters {
		if err := fn(ctx, m, m.Options().Addr); err != nil {
			return err
		}
	}
	return nil
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func newFlagSet(c *command, stderr io.Writer, jsonOut *bool) *flag.FlagSet {
	fs := flag.NewFlagSet("cachectl "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(jsonOut, "json", false, "machine-readable JSON output")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: cachectl [global flags] %s %s\n\n%s\n", c.name, c.args, c.summary)
		if c.help != "" {
			fmt.Fprintf(w, "\n%s\n", c.help)
		}
		fmt.Fprintln(w, "\nflags:")
		fs.PrintDefaults()
	}
	return fs
}

// parseInterleaved parses fs's flags wherever they appear among args
// ("compare KEY -dsn ..."), returning the positional arguments in order.
// "--" ends flag parsing.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		// flag stops at "--" (consumed) or at the first non-flag.
		if n := len(args); n > 0 && !strings.HasPrefix(args[0], "-") {
			pos = append(pos, args[0])
			args = args[1:]
			continue
		}
		return append(pos, args...), nil
	}
}

func mainUsage(w io.Writer, global *flag.FlagSet) {
	fmt.Fprintln(w, "usage: cachectl [-redis ADDR[,ADDR...]] [-cluster] [-json] [-timeout D] COMMAND [flags] ARGS")
	fmt.Fprintln(w, "\nKEY is the full Redis key (Options.Prefix + loader name + \"#2:\" + key), e.g. app:user#2:42.")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "  help CMD    the flags of one command")
	fmt.Fprintln(w, "\nglobal flags:")
	out := global.Output()
	global.SetOutput(w)
	global.PrintDefaults()
	global.SetOutput(out)
	fmt.Fprintln(w, "\nexit status: 0 ok (warnings included), 1 error, 2 usage, 3 compare found a difference")
}

// writeJSON prints v indented.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// msDur renders milliseconds as a duration.
func msDur(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}
