package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/components"
	"github.com/go-echarts/go-echarts/v2/opts"
)

// writeReport writes the runs' samples as line charts over time (database
// queries/s, hit rate, p50/p99 latency), one line per implementation, with
// the phases marked, to path.
func writeReport(path string, cfg config, rs []runResult) error {
	page := components.NewPage()
	page.PageTitle = "cache demo report"
	page.SetLayout(components.PageFlexLayout)
	page.AddCharts(
		chart("Database queries per second", "queries/s", cfg, rs, func(s sample) float64 { return s.QPS }),
		chart("Hit rate", "%", cfg, rs, func(s sample) float64 { return s.HitRate }),
		chart("p50 latency", "ms", cfg, rs, func(s sample) float64 { return ms(s.P50) }),
		chart("p99 latency", "ms", cfg, rs, func(s sample) float64 { return ms(s.P99) }),
		chart("Requests per second", "requests/s", cfg, rs, func(s sample) float64 { return s.RPS }),
		chart("Failed requests per tick", "errors", cfg, rs, func(s sample) float64 { return float64(s.Errors) }),
	)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := page.Render(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// chart is one metric of every run over time. The x axis is the tick's
// end in seconds since the run began; the phases of the first run (every
// run has the same phase lengths) are marked by vertical lines.
func chart(title, unit string, cfg config, rs []runResult, metric func(sample) float64) *charts.Line {
	line := charts.NewLine()
	line.SetGlobalOptions(
		charts.WithInitializationOpts(opts.Initialization{Width: "900px", Height: "360px"}),
		charts.WithTitleOpts(opts.Title{Title: title, Subtitle: fmt.Sprintf("%d processes × %d clients, one point per %v", cfg.Processes, cfg.Workers, cfg.Tick)}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}),
		charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Right: "10%"}),
		charts.WithXAxisOpts(opts.XAxis{Name: "s", Type: "value"}),
		charts.WithYAxisOpts(opts.YAxis{Name: unit, Type: "value"}),
	)
	for i, r := range rs {
		data := make([]opts.LineData, len(r.Samples))
		for j, s := range r.Samples {
			data[j] = opts.LineData{Value: []float64{round(s.T), round(metric(s))}}
		}
		so := []charts.SeriesOpts{charts.WithLineChartOpts(opts.LineChart{ShowSymbol: opts.Bool(false)})}
		if i == 0 {
			var marks []opts.MarkLineNameXAxisItem
			for _, p := range r.Phases {
				marks = append(marks, opts.MarkLineNameXAxisItem{Name: p.Name, XAxis: round(p.Start)})
			}
			so = append(so,
				charts.WithMarkLineNameXAxisItemOpts(marks...),
				charts.WithMarkLineStyleOpts(opts.MarkLineStyle{
					Symbol: []string{"none", "none"},
					Label:  &opts.Label{Show: opts.Bool(true), Formatter: "{b}"},
				}),
			)
		}
		line.AddSeries(r.Impl, data, so...)
	}
	return line
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
