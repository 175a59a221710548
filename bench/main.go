// Command bench runs every scenario for every implementation against the
// real Redis and MariaDB and writes bench/results/RESULTS.md, a CSV per
// scenario, and charts of each scenario's primary metric next to them
// (charts.html, and one SVG per scenario; no script, nothing to fetch).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	quick := flag.Bool("quick", false, "seconds-long run: harness correctness only")
	only := flag.String("only", "", "comma-separated scenarios to run (default all)")
	impls := flag.String("impls", "", "comma-separated substrings of implementation names (default all)")
	out := flag.String("out", "results", "directory for RESULTS.md, the CSVs and the charts")
	flag.Parse()
	opt := RunOptions{Quick: *quick, Out: *out, Progress: os.Stderr, Stdout: os.Stdout,
		RedisAddr: env("CACHE_REDIS_ADDR", "127.0.0.1:6379"), DSN: env("CACHE_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test")}
	if *only != "" {
		opt.Only = strings.Split(*only, ",")
	}
	if *impls != "" {
		opt.Impls = strings.Split(*impls, ",")
	}
	if _, err := Run(context.Background(), opt); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// RunOptions configures one run.
type RunOptions struct {
	Quick     bool
	Out       string // "" writes no files
	Only      []string
	Impls     []string
	RedisAddr string
	DSN       string
	Progress  io.Writer // nil: no progress bar
	Stdout    io.Writer
}
