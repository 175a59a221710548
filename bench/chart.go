package main

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The charts are SVG drawn with gonum/plot, like the demo's report: no
// script and no network needed to look at them.

var (
	libColor      = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // this library: blue
	peerColor     = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff} // peers: orange
	baselineColor = color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff} // textbook and raw baseline: grey
	chartFont     = font.Font{Typeface: "Liberation", Variant: "Sans"}
)

// barChart draws t's primary metric as one horizontal bar per
// implementation, with its value written at the bar's end; a row without
// a result is labelled with why.
func barChart(t *Table) ([]byte, error) {
	p := plot.New()
	better := "higher is better"
	if t.Scenario.Lower {
		better = "lower is better"
	}
	p.Title.Text = fmt.Sprintf("%s: %s (%s)", t.Scenario.Title, t.Scenario.Metric, better)
	p.Title.TextStyle.Font = font.From(chartFont, 11)
	p.X.Label.Text = t.Scenario.Metric
	p.X.Label.TextStyle.Font = font.From(chartFont, 9)
	p.X.Tick.Label.Font = font.From(chartFont, 8)
	p.Y.Tick.Label.Font = font.From(chartFont, 8)
	grid := plotter.NewGrid()
	grid.Horizontal.Color = nil
	p.Add(grid)
	// Rows top to bottom as in RESULTS.md: the y axis counts upwards.
	n := len(t.Rows)
	names := make([]string, n)
	top := 0.0
	var labels plotter.XYLabels
	for i, row := range t.Rows {
		y := n - 1 - i
		names[y] = trunc(row[0], 48)
		v, ok := t.Values[i]
		if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
			why := "no result"
			if len(row) > 1 && strings.HasPrefix(row[1], "n/a") {
				why = row[1]
				for strings.HasPrefix(why, "n/a: n/a: ") {
					why = strings.TrimPrefix(why, "n/a: ")
				}
				why = trunc(why, 60)
			}
			labels.XYs = append(labels.XYs, plotter.XY{X: 0, Y: float64(y)})
			labels.Labels = append(labels.Labels, " "+why)
			continue
		}
		bar, err := plotter.NewBarChart(plotter.Values{v}, vg.Points(11))
		if err != nil {
			return nil, err
		}
		bar.Horizontal = true
		bar.XMin = float64(y)
		bar.Color = rowColor(row[0])
		bar.LineStyle.Width = 0
		p.Add(bar)
		top = max(top, v)
		labels.XYs = append(labels.XYs, plotter.XY{X: v, Y: float64(y)})
		labels.Labels = append(labels.Labels, " "+number(v))
	}
	if len(labels.XYs) > 0 {
		l, err := plotter.NewLabels(labels)
		if err != nil {
			return nil, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font = font.From(chartFont, 8)
			l.TextStyle[i].YAlign = draw.YCenter
		}
		p.Add(l)
	}
	p.NominalY(names...)
	if top <= 0 {
		top = 1
	}
	// Room right of the longest bar for its value.
	p.X.Min, p.X.Max = 0, top*1.2
	w, err := p.WriterTo(vg.Points(720), vg.Points(float64(60+18*n)), "svg")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := w.WriteTo(&b); err != nil {
		return nil, err
	}
	out := b.Bytes()
	if i := bytes.Index(out, []byte("<svg")); i > 0 {
		out = out[i:] // drop the XML declaration, for inlining in HTML
	}
	return out, nil
}

// number prints v with as many decimals as its size needs.
func number(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100 || v == math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func rowColor(name string) color.Color {
	switch {
	case strings.HasPrefix(name, "this library"):
		return libColor
	case isPeer(name) && name != "textbook":
		return peerColor
	}
	return baselineColor
}

// writeCharts writes one SVG per table and charts.html with all of them,
// next to RESULTS.md in dir.
func writeCharts(dir, md string, tables []*Table) error {
	type chart struct {
		Name, Explain string
		SVG           template.HTML
	}
	var charts []chart
	for _, t := range tables {
		svg, err := barChart(t)
		if err != nil {
			return fmt.Errorf("chart %s: %w", t.Scenario.Name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, t.Scenario.Name+".svg"), append([]byte(`<?xml version="1.0"?>`+"\n"), svg...), 0o644); err != nil {
			return err
		}
		// The SVG is drawn here from the run's numbers.
		charts = append(charts, chart{Name: t.Scenario.Name, Explain: t.Scenario.Explain, SVG: template.HTML(svg)})
	}
	// The run's date, machine, servers and modules, from RESULTS.md.
	var head []string
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(l, "- ") {
			head = append(head, l)
		}
		if strings.HasPrefix(l, "## ") {
			break
		}
	}
	var b bytes.Buffer
	if err := chartsTemplate.Execute(&b, struct {
		Head   string
		Charts []chart
	}{strings.Join(head, "\n"), charts}); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "charts.html"), b.Bytes(), 0o644)
}

var chartsTemplate = template.Must(template.New("charts").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Benchmark results: charts</title>
<style>
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 2em auto; max-width: 1040px; color: #222; line-height: 1.4; }
pre { white-space: pre-wrap; color: #555; }
.chart svg { max-width: 100%; height: auto; }
.swatch { display: inline-block; width: 1.6em; height: 0.6em; margin: 0 0.3em 0 1em; }
</style>
</head>
<body>
<h1>Benchmark results: charts</h1>
<p>The primary metric of each scenario, from the same run as RESULTS.md (next to this file), which has every column.
<span class="swatch" style="background: #1f77b4"></span>this library
<span class="swatch" style="background: #ff7f0e"></span>peers
<span class="swatch" style="background: #999999"></span>textbook cache-aside and the raw baseline</p>
<pre>{{.Head}}</pre>
{{range .Charts}}<div class="chart">
<p>{{.Explain}}</p>
{{.SVG}}
</div>
{{end}}
</body>
</html>
`))
