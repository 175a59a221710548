package observability

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	_ "github.com/go-sql-driver/mysql" // the driver of driveWritebehind's (unconnected) pool
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	cache "github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/writebehind"
)

const (
	dashboardFile = "grafana-dashboard.json"
	alertsFile    = "alerts.yml"
)

// exported is what the library exports: the metric families with their type
// and label names, and the label values it defines.
type exported struct {
	families      map[string]dto.MetricType
	labels        map[string][]string // family -> label names
	events        []string            // event="..." of cache_events_total
	requestResult []string            // result="..." of cache_requests_total
	loadResult    []string            // result="..." of cache_loads_total
}

// gatherExported drives a real Loader on miniredis through every path that
// creates a metric family and returns what the registry then holds.
func gatherExported(t *testing.T) exported {
	t.Helper()
	redis.SetLogger(quiet{}) // the dial failures after mr.Close are on purpose
	reg := prometheus.NewPedanticRegistry()
	rec, err := cache.NewPrometheus(reg)
	if err != nil {
		t.Fatal(err)
	}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })

	rows := map[string]string{"a": "x"}
	load := func(_ context.Context, key string) (string, error) {
		if key == "boom" {
			return "", errors.New("database down")
		}
		v, ok := rows[key]
		if !ok {
			return "", cache.ErrNotFound
		}
		return v, nil
	}
	l, err := cache.New(rdb, "users", load, &cache.Options{
		Recorder:        rec,
		BreakerFailures: 1,
		BreakerCooldown: time.Hour,       // stays open for the rest of the test
		RedisTimeout:    5 * time.Second, // miniredis under -race is slow; this test is not about timeouts
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	// A Loader with the in-process tier: its cache_local_* series exist
	// from New (on miniredis its stream never comes up: no CLIENT
	// TRACKING).
	tiered, err := cache.New(rdb, "sessions", load, &cache.Options{Recorder: rec, Local: &cache.LocalOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tiered.Close() })

	ctx := context.Background()
	get := func(key string, ok func(error) bool) {
		t.Helper()
		if _, err := l.Get(ctx, key); !ok(err) {
			t.Fatalf("Get(%q): unexpected error %v", key, err)
		}
	}
	noErr := func(err error) bool { return err == nil }
	notFound := func(err error) bool { return errors.Is(err, cache.ErrNotFound) }
	dbDown := func(err error) bool { return err != nil && strings.Contains(err.Error(), "database down") }
	get("a", noErr)                              // miss, load ok
	get("a", noErr)                              // hit
	get("missing", notFound)                     // miss, load not_found
	get("missing", notFound)                     // negative_hit
	get("boom", dbDown)                          // load error
	if err := l.Set(ctx, "b", "y"); err != nil { // a write
		t.Fatal(err)
	}
	if err := l.Invalidate(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	l.SetReadBypass(true)
	get("a", noErr) // bypass (loads from the database)
	l.SetReadBypass(false)

	driveWritebehind(t, rdb, reg)

	mr.Close()
	get("a", noErr) // Redis down: redis_error, breaker opens (BreakerFailures: 1)
	get("a", noErr) // redis_skipped
	if s := l.BreakerState(); s != cache.BreakerOpen {
		t.Fatalf("breaker %v, want open", s)
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ex := exported{families: map[string]dto.MetricType{}, labels: map[string][]string{}}
	seen := map[string]map[string]bool{} // family/label -> values gathered
	for _, mf := range mfs {
		ex.families[mf.GetName()] = mf.GetType()
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				key := mf.GetName() + "/" + lp.GetName()
				if seen[key] == nil {
					seen[key] = map[string]bool{}
					ex.labels[mf.GetName()] = append(ex.labels[mf.GetName()], lp.GetName())
				}
				seen[key][lp.GetValue()] = true
			}
		}
	}
	for name, typ := range ex.families {
		if typ == dto.MetricType_HISTOGRAM {
			ex.labels[name] = append(ex.labels[name], "le")
		}
	}

	// The label values the library defines.
	for i := 0; cache.Event(i).String() != "unknown"; i++ {
		ex.events = append(ex.events, cache.Event(i).String())
	}
	for _, e := range []cache.Event{cache.EventHit, cache.EventMiss, cache.EventNegativeHit, cache.EventStale, cache.EventBypass, cache.EventLocalHit} {
		ex.requestResult = append(ex.requestResult, e.String())
	}
	// cache_events_total never carries the request results.
	ex.events = slices.DeleteFunc(ex.events, func(e string) bool { return slices.Contains(ex.requestResult, e) })
	ex.loadResult = []string{"ok", "not_found", "error"}

	// The drive above must have made every family the adapter documents,
	// and what was gathered must agree with the defined values.
	want := []string{"cache_requests_total", "cache_events_total", "cache_loads_total",
		"cache_load_duration_seconds", "cache_breaker_state", "cache_read_bypass", "cache_invalidations_pending",
		"cache_redis_duration_seconds", "cache_writes_total"}
	want = append(want, localFamilies...)
	want = append(want, writebehindFamilies...)
	for _, name := range want {
		if _, ok := ex.families[name]; !ok {
			t.Fatalf("family %s not gathered; got %v", name, keys(ex.families))
		}
	}
	if len(ex.families) != len(want) {
		t.Fatalf("gathered %v, want exactly %v: update this test and the dashboard", keys(ex.families), want)
	}
	for key, defined := range map[string][]string{
		"cache_requests_total/result": ex.requestResult,
		"cache_events_total/event":    ex.events,
		"cache_loads_total/result":    ex.loadResult,
	} {
		for v := range seen[key] {
			if !slices.Contains(defined, v) {
				t.Errorf("%s=%q gathered but not among the defined values %v", key, v, defined)
			}
		}
	}
	for _, v := range []string{"ok", "not_found", "error"} {
		if !seen["cache_loads_total/result"][v] {
			t.Errorf("the drive produced no cache_loads_total{result=%q}", v)
		}
	}
	return ex
}

// localFamilies are the in-process tier's metric families.
var localFamilies = []string{"cache_local_entries", "cache_local_bytes", "cache_local_fills_total",
	"cache_local_fills_refused_total", "cache_local_invalidations_total", "cache_local_invalidation_messages_total",
	"cache_local_flushes_total", "cache_local_barriers_total", "cache_local_barrier_waits_total",
	"cache_local_barrier_waits_failed_total", "cache_local_barrier_duration_seconds", "cache_local_up",
	"cache_local_lag_seconds"}

// writebehindFamilies are the metric families of the writebehind package.
var writebehindFamilies = []string{"cache_writebehind_adds_total", "cache_writebehind_flushed_total",
	"cache_writebehind_batches_total", "cache_writebehind_batch_entries", "cache_writebehind_batch_rows",
	"cache_writebehind_claimed_total", "cache_writebehind_flush_errors_total", "cache_writebehind_redis_losses_total",
	"cache_writebehind_pending_entries", "cache_writebehind_lag_seconds"}

// driveWritebehind registers a write-behind Counter and Flusher on reg and
// counts one delta: their series exist from construction (the flusher
// needs no database for that; sql.Open does not connect).
func driveWritebehind(t *testing.T, rdb redis.UniversalClient, reg prometheus.Registerer) {
	t.Helper()
	c, err := writebehind.New(rdb, "likes", &writebehind.Options{Registerer: reg, SkipPolicyCheck: true}) // miniredis has no CONFIG
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Add(context.Background(), "post:1", 1); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", "root@tcp(127.0.0.1:1)/unused")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	apply := func(context.Context, *sql.Tx, []writebehind.Delta) error { return nil }
	if _, err := c.NewFlusher(db, apply, &writebehind.FlusherOptions{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
}

// quiet drops go-redis's own log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// dashboardExprs returns the PromQL of the dashboard: every target's expr
// and the template variables' queries, keyed by where they are.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && (k == "expr" || k == "definition" || (k == "query" && strings.Contains(path, "templating"))) {
					out[path+"."+k] = s
					continue
				}
				walk(path+"."+k, c)
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		}
	}
	walk("", doc)
	return out
}

// alertRule is one rule of the alerts file, read line by line (no YAML
// dependency): its name, expr and the keys it sets.
type alertRule struct {
	name string
	line int
	expr string
	keys map[string]bool
}

var yamlKey = regexp.MustCompile(`^(\s*)(?:- )?([a-z_]+):\s*(.*)$`)

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	f, err := os.Open(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	indent := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	var rules []alertRule
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.Contains(line, "\t") {
			t.Fatalf("%s:%d: tab in YAML", alertsFile, i+1)
		}
		m := yamlKey.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		key, val := m[2], strings.TrimSpace(m[3])
		if key == "alert" || key == "record" {
			rules = append(rules, alertRule{name: strings.Trim(val, `"'`), line: i + 1, keys: map[string]bool{key: true}})
			continue
		}
		if len(rules) == 0 {
			continue
		}
		r := &rules[len(rules)-1]
		r.keys[key] = true
		if key != "expr" {
			continue
		}
		if val == "" || strings.HasPrefix(val, "|") || strings.HasPrefix(val, ">") {
			// A block scalar: the lines indented deeper than the key.
			var block []string
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || indent(lines[i+1]) > indent(line)) {
				i++
				block = append(block, strings.TrimSpace(lines[i]))
			}
			r.expr = strings.Join(block, "\n")
		} else {
			r.expr = strings.Trim(val, `"'`)
		}
	}
	return rules
}

var (
	metricName = regexp.MustCompile(`\bcache_[a-z_]+\b`)
	// selector is a metric name with its label matchers.
	selector = regexp.MustCompile(`\b(cache_[a-z_]+)\s*\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`\b([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	literal  = regexp.MustCompile(`^[a-z_]+$`)
)

// checkExpr returns what is wrong with one PromQL expression: metrics the
// library does not export, labels it does not set, and event/result values
// it does not define.
func checkExpr(ex exported, expr string) []string {
	var problems []string
	family := func(name string) (string, bool) {
		if _, ok := ex.families[name]; ok {
			return name, true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			base, ok := strings.CutSuffix(name, suf)
			if ok && ex.families[base] == dto.MetricType_HISTOGRAM {
				return base, true
			}
		}
		return "", false
	}
	for _, name := range metricName.FindAllString(expr, -1) {
		if _, ok := family(name); !ok {
			problems = append(problems, fmt.Sprintf("metric %s is not exported (exported: %v)", name, keys(ex.families)))
		}
	}
	values := func(op, v string) []string {
		if op == "=~" || op == "!~" {
			return strings.Split(v, "|")
		}
		return []string{v}
	}
	// Every event/result matcher, wherever it is, names a defined value.
	all := slices.Concat(ex.events, ex.requestResult, ex.loadResult)
	inSelectors := 0
	for _, m := range matcher.FindAllStringSubmatch(expr, -1) {
		if m[1] != "event" && m[1] != "result" {
			continue
		}
		for _, v := range values(m[2], m[3]) {
			if !literal.MatchString(v) || !slices.Contains(all, v) {
				problems = append(problems, fmt.Sprintf("%s%s%q: %q is not a value the library defines", m[1], m[2], m[3], v))
			}
		}
	}
	// Within a selector, the label must be one of the metric's, and the value
	// one that metric carries.
	for _, s := range selector.FindAllStringSubmatch(expr, -1) {
		base, ok := family(s[1])
		if !ok {
			continue // reported above
		}
		for _, m := range matcher.FindAllStringSubmatch(s[2], -1) {
			if m[1] == "event" || m[1] == "result" {
				inSelectors++
			}
			if !slices.Contains(ex.labels[base], m[1]) {
				problems = append(problems, fmt.Sprintf("%s has no label %q (labels: %v)", base, m[1], ex.labels[base]))
				continue
			}
			var defined []string
			switch {
			case base == "cache_events_total" && m[1] == "event":
				defined = ex.events
			case base == "cache_requests_total" && m[1] == "result":
				defined = ex.requestResult
			case base == "cache_loads_total" && m[1] == "result":
				defined = ex.loadResult
			default:
				continue
			}
			for _, v := range values(m[2], m[3]) {
				if !slices.Contains(defined, v) {
					problems = append(problems, fmt.Sprintf("%s{%s%s%q}: %q is not one of %v", base, m[1], m[2], m[3], v, defined))
				}
			}
		}
	}
	total := 0
	for _, m := range matcher.FindAllStringSubmatch(expr, -1) {
		if m[1] == "event" || m[1] == "result" {
			total++
		}
	}
	if total != inSelectors {
		problems = append(problems, "an event/result matcher outside a cache_* selector")
	}
	return problems
}

func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	ex := gatherExported(t)

	exprs := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("found only %d expressions in %s", len(exprs), dashboardFile)
	}
	used := map[string]bool{}
	for where, e := range exprs {
		for _, p := range checkExpr(ex, e) {
			t.Errorf("%s %s: %s\n\t%s", dashboardFile, where, p, e)
		}
		for _, n := range metricName.FindAllString(e, -1) {
			used[n] = true
		}
	}

	rules := alertRules(t)
	if len(rules) < 8 {
		t.Fatalf("found only %d rules in %s", len(rules), alertsFile)
	}
	for _, r := range rules {
		if r.expr == "" {
			t.Errorf("%s:%d %s: no expr", alertsFile, r.line, r.name)
			continue
		}
		for _, k := range []string{"labels", "severity", "annotations", "summary", "description"} {
			if !r.keys[k] {
				t.Errorf("%s:%d %s: no %s", alertsFile, r.line, r.name, k)
			}
		}
		for _, p := range checkExpr(ex, r.expr) {
			t.Errorf("%s:%d %s: %s\n\t%s", alertsFile, r.line, r.name, p, r.expr)
		}
		for _, n := range metricName.FindAllString(r.expr, -1) {
			used[n] = true
		}
	}

	// Metric names mentioned anywhere in the two files (descriptions,
	// panel texts) must exist too.
	for _, file := range []string{dashboardFile, alertsFile} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range checkExpr(ex, string(raw)) {
			if strings.HasPrefix(p, "metric ") {
				t.Errorf("%s: %s", file, p)
			}
		}
	}

	// Every exported family is on the dashboard or in an alert.
	for name, typ := range ex.families {
		if used[name] || typ == dto.MetricType_HISTOGRAM && used[name+"_bucket"] {
			continue
		}
		t.Errorf("exported metric %s is used by neither %s nor %s", name, dashboardFile, alertsFile)
	}
}

// TestDashboardShape checks what Grafana needs to import the dashboard with
// any Prometheus data source.
func TestDashboardShape(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	}
	type datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	var d struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Title         string `json:"title"`
		Templating    struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Definition string          `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int                      `json:"id"`
			Type       string                   `json:"type"`
			Title      string                   `json:"title"`
			Datasource *datasource              `json:"datasource"`
			Targets    []target                 `json:"targets"`
			GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q", d.SchemaVersion, d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || string(v.Query) != `"prometheus"` {
				t.Errorf("datasource variable: type %q query %s", v.Type, v.Query)
			}
		case "loader":
			if v.Type != "query" || v.Definition != "label_values(cache_requests_total, loader)" {
				t.Errorf("loader variable: type %q definition %q", v.Type, v.Definition)
			}
		}
	}
	if vars["datasource"] == "" || vars["loader"] == "" || vars["counter"] == "" {
		t.Errorf("template variables %v, want datasource, loader and counter", vars)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				t.Errorf("panel %q: target %+v", p.Title, tg)
			}
			if strings.Contains(tg.Expr, "cache_writebehind_") {
				if !strings.Contains(tg.Expr, `counter=~"$counter"`) {
					t.Errorf("panel %q ignores the counter variable: %s", p.Title, tg.Expr)
				}
			} else if strings.Contains(tg.Expr, "cache_") && !strings.Contains(tg.Expr, `loader=~"$loader"`) {
				t.Errorf("panel %q ignores the loader variable: %s", p.Title, tg.Expr)
			}
		}
	}
}

// TestCheckExprCatchesMistakes makes sure the checker above is not vacuous.
func TestCheckExprCatchesMistakes(t *testing.T) {
	ex := gatherExported(t)
	for _, tc := range []struct {
		expr string
		bad  bool
	}{
		{`rate(cache_requests_total{result="hit"}[5m])`, false},
		{`histogram_quantile(0.99, rate(cache_load_duration_seconds_bucket[5m]))`, false},
		{`rate(cache_events_total{event=~"coalesced|lease_wait"}[5m])`, false},
		{`rate(cache_request_total[5m])`, true},                                     // misnamed metric
		{`rate(cache_requests_total_bucket[5m])`, true},                             // not a histogram
		{`rate(cache_events_total{event="stale_sets_prevented"}[5m])`, true},        // misnamed event
		{`rate(cache_events_total{event=~"coalesced|lease_waits"}[5m])`, true},      // one bad alternative
		{`rate(cache_events_total{event="hit"}[5m])`, true},                         // a request result is not an event
		{`rate(cache_requests_total{result="error"}[5m])`, true},                    // a load result on requests
		{`rate(cache_loads_total{result="hit"}[5m])`, true},                         // a request result on loads
		{`rate(cache_loads_total{status="error"}[5m])`, true},                       // no such label
		{`cache_breaker_state{state="open"}`, true},                                 // no such label
		{`label_replace(vector(1), "x", "", "", "") and on() (result="hit")`, true}, // matcher outside a selector
	} {
		got := checkExpr(ex, tc.expr)
		if (len(got) > 0) != tc.bad {
			t.Errorf("checkExpr(%s) = %v, want bad=%v", tc.expr, got, tc.bad)
		}
	}
}
