package main

import (
	"context"
	"os"
	"strings"
	"testing"
)

// TestQuick runs every scenario for every implementation in quick mode
// against the real servers: it checks that the harness works, not timings.
// Unreachable servers skip the test, except under CI (CI set) or with
// CACHE_REQUIRE_SERVERS=1, where they fail it.
func TestQuick(t *testing.T) {
	opt := RunOptions{Quick: true, Out: t.TempDir(),
		RedisAddr: env("CACHE_REDIS_ADDR", "127.0.0.1:6379"), DSN: env("CACHE_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test")}
	tables, err := Run(context.Background(), opt)
	if err != nil {
		if strings.Contains(err.Error(), "unreachable") && os.Getenv("CI") == "" && os.Getenv("CACHE_REQUIRE_SERVERS") != "1" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	if len(tables) != 7 {
		t.Fatalf("%d tables, want 7", len(tables))
	}
	byName := map[string]*Table{}
	for _, tb := range tables {
		byName[tb.Scenario.Name] = tb
		if len(tb.Rows) < len(Factories()) {
			t.Errorf("%s: %d rows, want ≥ %d", tb.Scenario.Name, len(tb.Rows), len(Factories()))
		}
		for _, r := range tb.Rows {
			if len(r) != len(tb.Header) {
				t.Errorf("%s: row %q has %d cells, header %d", tb.Scenario.Name, r[0], len(r), len(tb.Header))
			}
		}
		for impl, e := range tb.Errors {
			if !strings.Contains(e, "n/a: cannot hold") {
				t.Errorf("%s/%s: %s", tb.Scenario.Name, impl, e)
			}
		}
		for _, ext := range []string{".csv", ".svg"} {
			if _, err := os.Stat(opt.Out + "/" + tb.Scenario.Name + ext); err != nil {
				t.Error(err)
			}
		}
	}
	if _, err := os.Stat(opt.Out + "/RESULTS.md"); err != nil {
		t.Error(err)
	}
	// The charts page: one inline SVG per scenario and nothing to fetch.
	html, err := os.ReadFile(opt.Out + "/charts.html")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(html), "<svg"); n != len(tables) {
		t.Errorf("charts.html has %d SVGs, want %d", n, len(tables))
	}
	for _, bad := range []string{"<script", "<link", "src=", "@import"} {
		if strings.Contains(string(html), bad) {
			t.Errorf("charts.html contains %q", bad)
		}
	}
	// The harness must be able to see what it claims to measure: the
	// library does exactly one load in the stampede, the textbook more.
	st := byName["stampede"]
	if st.Rows[0][1] != "1" {
		t.Errorf("stampede: this library loaded %s times", st.Rows[0][1])
	}
}
