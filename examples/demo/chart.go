package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The charts are SVG drawn here with gonum/plot: the report needs no
// script and no network to show them.

var (
	implColors = map[string]color.RGBA{
		implLibrary: {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
		implNaive:   {R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
		implTier:    {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	}
	bandFill  = color.RGBA{R: 0xf2, G: 0xf2, B: 0xf2, A: 0xff}
	downFill  = color.RGBA{R: 0xfb, G: 0xdc, B: 0xdc, A: 0xff}
	edgeColor = color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}
	chartFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
)

const (
	chartWidth  vg.Length = 720 // points
	chartHeight vg.Length = 250
	labelSize             = 8 // points
)

// timeline puts every run's phases on one x axis: phase i starts at the
// sum of the longest run of each phase before it, and a sample is placed
// at its phase's start plus its time into the phase. Runs then line up at
// every phase boundary even when a phase lasted longer in one run.
type timeline struct {
	names  []string
	starts []float64 // seconds
	end    float64
}

func newTimeline(rs []runResult) timeline {
	var tl timeline
	if len(rs) == 0 {
		return tl
	}
	for i, p := range rs[0].Phases {
		longest := 0.0
		for _, r := range rs {
			if i < len(r.Phases) {
				longest = max(longest, r.Phases[i].Seconds())
			}
		}
		tl.names = append(tl.names, p.Name)
		tl.starts = append(tl.starts, tl.end)
		tl.end += longest
	}
	return tl
}

// x is where time t (seconds since r began) of r's phase called phase goes.
func (tl timeline) x(r runResult, phase string, t float64) (float64, bool) {
	for i, p := range r.Phases {
		if p.Name == phase && i < len(tl.starts) {
			return tl.starts[i] + t - p.Start, true
		}
	}
	return 0, false
}

// chartSpec is one chart: a metric of every run over time.
type chartSpec struct {
	Title, Unit string
	Metric      func(sample) float64
	Recovery    bool    // mark when each run's hit rate recovered after the outage
	Top         float64 // the y axis's top; 0: the data's maximum
}

// lineChart draws spec for every run as SVG, with the phases as bands.
func lineChart(spec chartSpec, rs []runResult) ([]byte, error) {
	tl := newTimeline(rs)
	p := plot.New()
	p.Title.Text = spec.Title
	p.Title.TextStyle.Font = font.From(chartFont, 11)
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(chartFont, 9)
		a.Tick.Label.Font = font.From(chartFont, 8)
	}
	p.X.Label.Text = "seconds since the run began (runs aligned at each phase's start)"
	p.Y.Label.Text = spec.Unit
	deco := &decorations{tl: tl}
	p.Add(deco)
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil // vertical lines are the phases' edges
	p.Add(grid)
	top := 0.0
	for _, r := range rs {
		// A tick whose metric is undefined (no request ended in it) breaks
		// the line rather than being drawn as 0.
		var segs []plotter.XYs
		var cur plotter.XYs
		for _, s := range r.Samples {
			x, ok := tl.x(r, s.Phase, s.T)
			if !ok {
				continue
			}
			v := spec.Metric(s)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				if len(cur) > 0 {
					segs, cur = append(segs, cur), nil
				}
				continue
			}
			cur = append(cur, plotter.XY{X: x, Y: v})
			top = max(top, v)
		}
		if len(cur) > 0 {
			segs = append(segs, cur)
		}
		for _, xys := range segs {
			if len(xys) == 1 {
				sc, err := plotter.NewScatter(xys)
				if err != nil {
					return nil, err
				}
				sc.GlyphStyle.Color = implColors[r.Impl]
				sc.GlyphStyle.Radius = vg.Points(1.5)
				sc.GlyphStyle.Shape = draw.CircleGlyph{}
				p.Add(sc)
				continue
			}
			line, err := plotter.NewLine(xys)
			if err != nil {
				return nil, err
			}
			line.Color = implColors[r.Impl]
			line.Width = vg.Points(1.5)
			p.Add(line)
		}
		if o := r.phase(phaseOutage).Outage; o != nil {
			if x, ok := tl.x(r, phaseOutage, o.DownAt); ok && deco.down == nil {
				up, _ := tl.x(r, phaseOutage, o.UpAt)
				deco.down = &[2]float64{x, up}
			}
			if x, ok := tl.x(r, phaseOutage, o.UpAt+o.Recovery); ok && spec.Recovery && o.Recovered {
				deco.marks = append(deco.marks, vmark{x: x, color: implColors[r.Impl]})
			}
		}
	}
	if spec.Top > 0 {
		top = spec.Top
	}
	if top <= 0 {
		top = 1
	}
	p.Y.Tick.Marker = ticks{top: top}
	// A report of skipped runs only has no time axis: one second of it.
	end := tl.end
	if end <= 0 {
		end = 1
	}
	p.X.Tick.Marker = ticks{top: end}
	// Room above the data for the phase labels.
	p.X.Min, p.X.Max = 0, end
	p.Y.Min, p.Y.Max = 0, top*1.35
	w, err := p.WriterTo(chartWidth, chartHeight, "svg")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := w.WriteTo(&b); err != nil {
		return nil, err
	}
	return inlineSVG(b.Bytes()), nil
}

// inlineSVG drops the XML declaration and comment vgsvg writes before
// <svg>, so that the SVG can sit inside HTML.
func inlineSVG(b []byte) []byte {
	if i := bytes.Index(b, []byte("<svg")); i > 0 {
		b = b[i:]
	}
	return b
}

// vmark is a dashed vertical line.
type vmark struct {
	x     float64
	color color.Color
}

// decorations draws the phases as alternating bands with their labels on
// two alternating rows (so that neighbours never share a row), the Redis
// outage as a red band with its label on a third row, and vertical marks.
type decorations struct {
	tl    timeline
	down  *[2]float64
	marks []vmark
}

func (d *decorations) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	text := draw.TextStyle{Color: color.Black, Font: font.From(chartFont, labelSize),
		XAlign: draw.XLeft, YAlign: draw.YTop, Handler: plot.DefaultTextHandler}
	row := func(i int) vg.Length { return c.Max.Y - 2 - vg.Length(i)*(labelSize+3) }
	rect := func(fill color.Color, x0, x1 vg.Length) {
		c.FillPolygon(fill, []vg.Point{{X: x0, Y: c.Min.Y}, {X: x1, Y: c.Min.Y}, {X: x1, Y: c.Max.Y}, {X: x0, Y: c.Max.Y}})
	}
	start := func(i int) vg.Length { return trX(d.tl.starts[i]) }
	end := func(i int) vg.Length {
		if i+1 < len(d.tl.starts) {
			return start(i + 1)
		}
		return trX(d.tl.end)
	}
	// Fills first, so that no fill covers a label.
	for i := range d.tl.names {
		if i%2 == 0 {
			rect(bandFill, start(i), end(i))
		}
	}
	if d.down != nil {
		rect(downFill, trX(d.down[0]), trX(d.down[1]))
	}
	edge := draw.LineStyle{Color: edgeColor, Width: vg.Points(0.5)}
	for i, name := range d.tl.names {
		x0 := start(i)
		c.StrokeLine2(edge, x0, c.Min.Y, x0, c.Max.Y)
		// A label may run past its band into the next one (which labels on
		// the other row) but not into the band after: there it is cut to
		// its number.
		room := c.Max.X - x0
		if i+2 < len(d.tl.starts) {
			room = start(i+2) - x0
		}
		label := phaseLabels[name]
		if label == "" {
			label = name
		}
		if text.Width(label)+6 > room {
			label, _, _ = strings.Cut(label, " ")
		}
		c.FillText(text, vg.Point{X: x0 + 3, Y: row(i % 2)}, label)
	}
	if d.down != nil {
		c.FillText(text, vg.Point{X: trX(d.down[0]) + 3, Y: row(2)}, "Redis down")
	}
	for _, m := range d.marks {
		sty := draw.LineStyle{Color: m.color, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(3), vg.Points(2)}}
		c.StrokeLine2(sty, trX(m.x), c.Min.Y, trX(m.x), row(3))
	}
}

// ticks are gonum/plot's default ticks up to top (the space above is for
// the phase labels), labelled as plain numbers.
type ticks struct{ top float64 }

func (t ticks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for _, tk := range (plot.DefaultTicks{}).Ticks(lo, min(hi, t.top)) {
		if tk.Label != "" {
			tk.Label = strconv.FormatFloat(tk.Value, 'f', -1, 64)
		}
		out = append(out, tk)
	}
	return out
}

// charts are the report's charts, in order.
var charts = []chartSpec{
	{Title: "Database queries per second", Unit: "queries/s", Metric: func(s sample) float64 { return s.QPS }},
	{Title: "Database queries per 1,000 requests", Unit: "queries per 1,000 requests", Metric: ifRequests(sample.QueriesPer1k)},
	{Title: "Hit rate (dashed: recovered after the outage)", Unit: "% of requests", Metric: ifRequests(func(s sample) float64 { return s.HitRate }), Recovery: true, Top: 100},
	{Title: "p50 latency", Unit: "ms", Metric: ifRequests(func(s sample) float64 { return ms(s.P50) })},
	{Title: "p99 latency", Unit: "ms", Metric: ifRequests(func(s sample) float64 { return ms(s.P99) })},
	{Title: "Requests per second", Unit: "requests/s", Metric: func(s sample) float64 { return s.RPS }},
	{Title: "Failed requests per tick", Unit: "failed requests", Metric: func(s sample) float64 { return float64(s.Errors) }},
}

// ifRequests is metric, undefined (NaN) for a tick in which no request
// ended.
func ifRequests(metric func(sample) float64) func(sample) float64 {
	return func(s sample) float64 {
		if s.Requests == 0 {
			return math.NaN()
		}
		return metric(s)
	}
}

// colorHex is c as CSS.
func colorHex(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }
