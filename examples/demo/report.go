package main

import (
	"bytes"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// headline is one row of the summary: a number per run.
type headline struct {
	Name   string
	Values []string
}

// headlines are the runs' key numbers, one row per claim the demo makes;
// the terminal and the report print the same rows.
func headlines(rs []runResult) []headline {
	row := func(name string, f func(runResult) string) headline {
		h := headline{Name: name}
		for _, r := range rs {
			h.Values = append(h.Values, f(r))
		}
		return h
	}
	phase := func(name string, f func(phaseResult) string) func(runResult) string {
		return func(r runResult) string {
			p := r.phase(name)
			if p.Skipped != "" {
				return "skipped"
			}
			return f(p)
		}
	}
	return []headline{
		row("cold start: database queries for the burst", phase(phaseCold, func(p phaseResult) string {
			if p.Cold == nil {
				return "-"
			}
			return fmt.Sprintf("%d for %d Gets", p.Cold.Loads, p.Cold.Gets)
		})),
		row("steady: hit rate", phase(phaseSteady, func(p phaseResult) string { return fmt.Sprintf("%.1f%%", p.HitRate()) })),
		row("steady: database queries per 1,000 requests", phase(phaseSteady, func(p phaseResult) string { return fmt.Sprintf("%.1f", p.QueriesPer1k()) })),
		row("steady: answered from process memory", func(r runResult) string {
			p := r.phase(phaseSteady)
			switch {
			case p.Skipped != "":
				return "skipped"
			case r.Impl != implTier:
				return "-"
			}
			return fmt.Sprintf("%.1f%%", pct(p.Lib.LocalHits, p.Requests))
		}),
		row("steady: p50", phase(phaseSteady, func(p phaseResult) string { return fmtDur(p.P50) })),
		row("steady: p99", phase(phaseSteady, func(p phaseResult) string { return fmtDur(p.P99) })),
		row("hot key: database queries", phase(phaseHot, func(p phaseResult) string {
			return fmt.Sprintf("%d (%.1f per 1k req)", p.Queries, p.QueriesPer1k())
		})),
		row("write race: rounds arranged as the textbook race", phase(phaseRace, func(p phaseResult) string {
			if p.Race == nil {
				return "-"
			}
			return fmt.Sprintf("%d of %d", p.Race.Arranged, p.Race.Rounds)
		})),
		row("write race: stale reads", phase(phaseRace, func(p phaseResult) string {
			if p.Race == nil {
				return "-"
			}
			return fmt.Sprintf("%d of %d", p.Race.StaleReads, p.Race.Reads)
		})),
		row("write race: database SELECTs older than a returned write", phase(phaseRace, func(p phaseResult) string {
			if p.Race == nil {
				return "-"
			}
			return fmt.Sprintf("%d", p.Race.DBStaleReads)
		})),
		row("write race: users served stale afterwards", phase(phaseRace, func(p phaseResult) string {
			if p.Race == nil {
				return "-"
			}
			return fmt.Sprintf("%d of %d", p.Race.StaleUsers, p.Race.Users)
		})),
		row("outage: requests failed while Redis was down", phase(phaseOutage, func(p phaseResult) string {
			if p.Outage == nil {
				return "-"
			}
			return fmt.Sprintf("%d of %d", p.Outage.Down.Errors, p.Outage.Down.Requests)
		})),
		row(fmt.Sprintf("outage: Redis back → hit rate ≥ %.0f%% of steady", 100*recoveryShare), func(r runResult) string {
			return recoveryText(r.phase(phaseOutage))
		}),
	}
}

// reportData is what the report's template shows.
type reportData struct {
	Setup, Date, GoVersion string
	Took                   string
	Runs                   []runResult
	Titles                 []string
	Colors                 []string
	Headlines              []headline
	Phases                 []reportPhase
	Charts                 []template.HTML
	RecoveryShare          float64
	Window, Poll           time.Duration
}

// reportPhase is one phase of every run.
type reportPhase struct {
	Name string
	Runs []reportPhaseRun
}

type reportPhaseRun struct {
	Impl, Title, Color string
	P                  phaseResult
}

// writeReport writes the report of the runs to path: a heading, the
// summary table, each phase's sentences and numbers, and the charts over
// time, in one HTML file with no script and no external resource.
func writeReport(path string, cfg config, setup string, rs []runResult) error {
	d := reportData{
		Setup:         setup,
		Date:          time.Now().UTC().Format("2006-01-02 15:04 MST"),
		GoVersion:     runtime.Version(),
		Runs:          rs,
		Headlines:     headlines(rs),
		RecoveryShare: 100 * recoveryShare,
		Window:        recoveryWindow,
		Poll:          recoveryPoll,
	}
	total := 0.0
	for _, r := range rs {
		d.Titles = append(d.Titles, implTitle(r.Impl))
		d.Colors = append(d.Colors, colorHex(implColors[r.Impl]))
		if n := len(r.Phases); n > 0 {
			total += r.Phases[n-1].End
		}
	}
	d.Took = fmt.Sprintf("%d run%s, %.0f s in all, one point per %v", len(rs), plural(int64(len(rs)), "", "s"), total, cfg.Tick)
	if len(rs) > 0 {
		for i, p := range rs[0].Phases {
			ph := reportPhase{Name: p.Name}
			for _, r := range rs {
				if i < len(r.Phases) {
					ph.Runs = append(ph.Runs, reportPhaseRun{Impl: r.Impl, Title: implTitle(r.Impl),
						Color: colorHex(implColors[r.Impl]), P: r.Phases[i]})
				}
			}
			d.Phases = append(d.Phases, ph)
		}
	}
	for _, c := range charts {
		svg, err := lineChart(c, rs)
		if err != nil {
			return fmt.Errorf("chart %q: %w", c.Title, err)
		}
		// The SVG is drawn here, from numbers: nothing in it comes from
		// outside the program.
		d.Charts = append(d.Charts, template.HTML(svg))
	}
	var b bytes.Buffer
	if err := reportTemplate.Execute(&b, d); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur":   fmtDur,
	"f1":    func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"f0":    func(f float64) string { return fmt.Sprintf("%.0f", f) },
	"label": func(name string) string { return phaseLabels[name] },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cache demo report</title>
<style>
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 2em auto; max-width: 1040px; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
.setup { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
.swatch { display: inline-block; width: 1.6em; height: 0.35em; vertical-align: middle; margin-right: 0.4em; }
.impl { font-weight: bold; }
.phase p { margin: 0.3em 0 0.3em 1em; }
.chart { margin: 1.2em 0; }
.chart svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>cache demo: this library (and its in-process tier) next to textbook cache-aside</h1>
<p class="setup">{{.Setup}}.<br>Run {{.Date}}, {{.GoVersion}}, {{.Took}}. Every number and sentence below was computed from this run.</p>
<p>{{range $i, $t := .Titles}}<span class="swatch" style="background: {{index $.Colors $i}}"></span>{{$t}}<br>{{end}}</p>

<h2>Summary</h2>
<table>
<thead><tr><th></th>{{range .Runs}}<th>{{.Impl}}</th>{{end}}</tr></thead>
<tbody>
{{range .Headlines}}<tr><td>{{.Name}}</td>{{range .Values}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody>
</table>

<h2>What happened, phase by phase</h2>
{{range $i, $ph := .Phases}}<div class="phase">
<h3>{{$ph.Name}}</h3>
{{range $ph.Runs}}<p><span class="swatch" style="background: {{.Color}}"></span><span class="impl">{{.Impl}}:</span> {{.P.Sentence}}</p>
{{end}}</div>
{{end}}

<h2>Per phase</h2>
<table>
<thead><tr><th>phase</th><th>implementation</th><th>seconds</th><th>requests</th><th>hit rate</th><th>database queries</th><th>queries/s</th><th>queries per 1,000 requests</th><th>p50</th><th>p99</th><th>failed</th></tr></thead>
<tbody>
{{range .Phases}}{{range .Runs}}{{if .P.Skipped}}<tr><td>{{label .P.Name}}</td><td>{{.Impl}}</td><td colspan="9" style="text-align: left">skipped</td></tr>
{{else}}<tr><td>{{label .P.Name}}</td><td>{{.Impl}}</td><td>{{f1 .P.Seconds}}</td><td>{{.P.Requests}}</td><td>{{f1 .P.HitRate}}%</td><td>{{.P.Queries}}</td><td>{{f0 .P.QPS}}</td><td>{{f1 .P.QueriesPer1k}}</td><td>{{dur .P.P50}}</td><td>{{dur .P.P99}}</td><td>{{.P.Errors}}</td></tr>
{{end}}{{end}}{{end}}</tbody>
</table>
<p class="note">Hit rate counts cache hits: Redis hits, and for the tier also Gets answered from process memory. Database load is given per 1,000 requests next to queries/s: an implementation that serves more requests per second also sends more queries per second. Recovery after the outage is the time from Redis answering again to the hit rate over the last {{.Window}} (checked every {{.Poll}}) reaching {{f0 .RecoveryShare}}% of the implementation's own steady-phase hit rate.</p>

<h2>Over time</h2>
<p class="note">One point per tick; shaded bands are the phases, the red band is Redis being down. The runs are aligned at the start of each phase.</p>
{{range .Charts}}<div class="chart">{{.}}</div>
{{end}}
</body>
</html>
`))

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
