package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Table is one scenario's result.
type Table struct {
	Scenario Scenario
	Header   []string
	Rows     [][]string
	Errors   map[string]string // implementation -> why it has no row
	// Values are the rows' primary metrics (Scenario.Metric), by row
	// index; a row without a result has none.
	Values map[int]float64
}

// Run runs the selected scenarios and writes the report.
func Run(ctx context.Context, o RunOptions) ([]*Table, error) {
	p := FullParams()
	if o.Quick {
		p = QuickParams()
	}
	rows := p.ZipfKeys
	e, err := NewEnv(ctx, o.RedisAddr, o.DSN, rows)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	r := &Runner{Env: e, P: p}
	var scns []Scenario
	for _, s := range r.Scenarios() {
		if len(o.Only) == 0 || slices.Contains(o.Only, s.Name) {
			scns = append(scns, s)
		}
	}
	var facts []Factory
	for _, f := range Factories() {
		if len(o.Impls) == 0 || slices.ContainsFunc(o.Impls, func(s string) bool { return strings.Contains(f.Name, s) }) {
			facts = append(facts, f)
		}
	}
	var pb *mpb.Progress
	var bar *mpb.Bar
	if o.Progress != nil {
		pb = mpb.New(mpb.WithOutput(o.Progress), mpb.WithWidth(40))
		bar = pb.AddBar(int64(len(scns)*len(facts)),
			mpb.PrependDecorators(decor.Name("bench "), decor.CountersNoUnit("%d/%d")),
			mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO), decor.Name(" "), decor.Any(func(decor.Statistics) string { return status.Load() })))
	}
	var tables []*Table
	for _, s := range scns {
		t := &Table{Scenario: s, Header: append(slices.Clone(s.Header), "vs best peer ("+s.Metric+")"), Errors: map[string]string{}}
		metrics := map[int]float64{}
		for _, f := range facts {
			status.Store(s.Name + ": " + f.Name)
			cells, m, err := s.Run(ctx, f)
			if err != nil {
				t.Errors[f.Name] = err.Error()
				t.Rows = append(t.Rows, append([]string{f.Name, "n/a: " + trunc(err.Error(), 120)}, make([]string, len(t.Header)-2)...))
			} else {
				metrics[len(t.Rows)] = m
				t.Rows = append(t.Rows, append(append([]string{f.Name}, cells...), ""))
			}
			if bar != nil {
				bar.Increment()
			}
		}
		// ratios against the best peer
		best, have := 0.0, false
		for i, m := range metrics {
			if isPeer(t.Rows[i][0]) && (!have || (s.Lower && m < best) || (!s.Lower && m > best)) {
				best, have = m, true
			}
		}
		for i, m := range metrics {
			switch {
			case !have:
			case best == 0 && m == 0:
				t.Rows[i][len(t.Header)-1] = "= best (0)"
			case best == 0:
				t.Rows[i][len(t.Header)-1] = fmt.Sprintf("%g vs 0", m)
			default:
				t.Rows[i][len(t.Header)-1] = fmt.Sprintf("%.2f×", m/best)
			}
		}
		t.Values = metrics
		if s.Extra != nil {
			extra, values, err := s.Extra(ctx)
			if err != nil {
				t.Errors["baseline"] = err.Error()
			}
			for i, v := range values {
				if i < len(extra) {
					t.Values[len(t.Rows)+i] = v
				}
			}
			t.Rows = append(t.Rows, extra...)
		}
		tables = append(tables, t)
		e.CleanRedis(ctx, e.Prefix)
	}
	if pb != nil {
		pb.Wait()
	}
	md := Markdown(ctx, e, o, tables)
	if o.Stdout != nil {
		fmt.Fprint(o.Stdout, md)
	}
	if o.Out != "" {
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			return tables, err
		}
		if err := os.WriteFile(filepath.Join(o.Out, "RESULTS.md"), []byte(md), 0o644); err != nil {
			return tables, err
		}
		if err := writeCharts(o.Out, md, tables); err != nil {
			return tables, err
		}
		for _, t := range tables {
			if err := writeCSV(filepath.Join(o.Out, t.Scenario.Name+".csv"), t); err != nil {
				return tables, err
			}
		}
	}
	return tables, nil
}

type atomicString struct{ v atomic.Value }

var status atomicString

func (a *atomicString) Store(s string) { a.v.Store(s) }
func (a *atomicString) Load() string {
	s, _ := a.v.Load().(string)
	return s
}

func isPeer(name string) bool {
	return !strings.HasPrefix(name, "this library") && !strings.HasPrefix(name, "raw")
}

func writeCSV(path string, t *Table) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write(t.Header)
	_ = w.WriteAll(t.Rows)
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Markdown renders the whole report.
func Markdown(ctx context.Context, e *Env, o RunOptions, tables []*Table) string {
	var b strings.Builder
	mode := "full"
	if o.Quick {
		mode = "quick (harness check only; numbers meaningless)"
	}
	fmt.Fprintf(&b, "# Benchmark results\n\n")
	fmt.Fprintf(&b, "- date: %s\n- mode: %s\n- machine: %s, %d CPUs, %s/%s, %s\n", time.Now().UTC().Format(time.RFC3339), mode, cpuModel(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(&b, "- servers: Redis %s, database %s (loopback)\n", redisVersion(ctx, e), dbVersion(ctx, e))
	fmt.Fprintf(&b, "- modules: %s\n\n", modules())
	if o.Out != "" {
		fmt.Fprintf(&b, "Charts of each scenario's primary metric: [charts.html](charts.html), and one SVG per scenario (`<scenario>.svg`).\n\n")
	}
	fmt.Fprintf(&b, "\"vs best peer\" divides each implementation's primary metric by the best peer's (this library and the baseline are not peers); below 1× is better where lower is better.\n\n")
	for _, t := range tables {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", t.Scenario.Title, t.Scenario.Explain)
		b.WriteString("| " + strings.Join(t.Header, " | ") + " |\n")
		b.WriteString("|" + strings.Repeat("---|", len(t.Header)) + "\n")
		for _, r := range t.Rows {
			b.WriteString("| " + strings.Join(r, " | ") + " |\n")
		}
		b.WriteString("\n")
	}
	b.WriteString("## Implementations\n\n")
	for _, f := range Factories() {
		if f.Note != "" {
			fmt.Fprintf(&b, "- %s: %s\n", f.Name, f.Note)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.Index(l, ":"); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return "unknown CPU"
}

func redisVersion(ctx context.Context, e *Env) string {
	info, err := e.admin.Info(ctx, "server").Result()
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "redis_version:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "redis_version:"))
		}
	}
	return "?"
}

func dbVersion(ctx context.Context, e *Env) string {
	var v string
	if err := e.DB.QueryRowContext(ctx, "SELECT VERSION()").Scan(&v); err != nil {
		return "?"
	}
	return v
}

func modules() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	want := []string{"github.com/redis/go-redis/v9", "github.com/go-redis/cache/v9", "github.com/dtm-labs/rockscache",
		"github.com/eko/gocache/lib/v4", "github.com/eko/gocache/store/redis/v4", "github.com/zeromicro/go-zero",
		"github.com/viccon/sturdyc", "github.com/go-sql-driver/mysql"}
	var parts []string
	for _, d := range bi.Deps {
		if slices.Contains(want, d.Path) {
			parts = append(parts, d.Path+" "+d.Version)
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ") + "; this library from ../ (replace)"
}

var _ = io.Discard
var _ = strconv.Itoa
