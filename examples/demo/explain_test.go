package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestExplainSaysWhatHappened checks that each sentence follows the
// numbers: what did not happen is said not to have happened.
func TestExplainSaysWhatHappened(t *testing.T) {
	outage := func(recovered bool, errs, reqs int64, p50 time.Duration) phaseResult {
		return phaseResult{Name: phaseOutage, Start: 10, End: 14, Requests: reqs,
			Outage: &outageResult{DownAt: 10.25, UpAt: 10.75, After: 3.25, Down: span{Requests: reqs, Errors: errs, P50: p50},
				Steady: 95, Threshold: 85.5, Recovered: recovered, Recovery: 0.4, EndHitRate: 12, Window: recoveryWindow}}
	}
	race := func(arranged, staleUsers int64) phaseResult {
		return phaseResult{Name: phaseRace, Start: 1, End: 2,
			Race: &raceResult{Rounds: 20, Writes: 20, Arranged: arranged, Held: 2 * arranged, Reads: 900,
				StaleReads: 10 * staleUsers, Users: 5, StaleUsers: staleUsers, Wait: 300 * time.Millisecond}}
	}
	for _, tc := range []struct {
		name, impl string
		p          phaseResult
		want, not  []string
	}{
		{"recovered", implLibrary, outage(true, 0, 100, time.Millisecond),
			[]string{"none of 100 requests failed", "was back to ≥ 86% (90% of the steady phase's 95.0%) 0.40 s later"}, []string{"had not"}},
		{"not recovered", implLibrary, outage(false, 0, 100, time.Millisecond),
			[]string{"had not recovered to 86%", "3.2 s later, when the phase ended", "it was 12.0%"}, []string{"was back"}},
		{"textbook outage, all failed", implNaive, outage(true, 40, 40, time.Millisecond),
			[]string{"all 40 requests failed", "a Redis error fails the request"}, []string{"dial retries"}},
		{"textbook outage, waited", implNaive, outage(true, 0, 32, 500*time.Millisecond),
			[]string{"none of 32 requests failed", "dial retries"}, []string{"fails the request"}},
		{"race not arranged", implNaive, race(0, 0),
			[]string{"could not be set up", "does not test"}, []string{"SETs landed"}},
		{"race arranged, stale", implNaive, race(18, 3),
			[]string{"In 18 of those rounds", "3 of 5 written users", "SETs landed after the writer's DEL"}, []string{"could not"}},
		{"race arranged, not stale", implNaive, race(18, 0),
			[]string{"did not leave a stale value"}, []string{"SETs landed"}},
		{"cold stampede", implNaive, phaseResult{Name: phaseCold, Start: 0, End: 1, Cold: &coldResult{Gets: 256, Loads: 40}},
			[]string{"cost 40 database queries", "stampede"}, []string{"no stampede"}},
		{"cold without stampede", implNaive, phaseResult{Name: phaseCold, Start: 0, End: 1, Cold: &coldResult{Gets: 256, Loads: 1}},
			[]string{"cost 1 database query", "shows no stampede"}, nil},
		{"skipped", implLibrary, phaseResult{Name: phaseOutage, Skipped: "no embedded Redis"},
			[]string{"Skipped: no embedded Redis."}, nil},
		{"tier skipped", implTier, skippedRun(implTier, "no CLIENT TRACKING").phase(phaseSteady),
			[]string{"Skipped: no CLIENT TRACKING."}, []string{"tier answered"}},
		{"tier steady", implTier, phaseResult{Name: phaseSteady, Start: 1, End: 2, Requests: 1000, Hits: 950, Queries: 50,
			Lib: libCounts{LocalHits: 800, BarrierWaits: 810}},
			[]string{"95.0% of 1000 requests were cache hits (80.0% answered from process memory, 15.0% by Redis)",
				"The tier answered 800 Gets from process memory", "810 strict Gets waited"}, []string{"failed", "broke"}},
		{"tier race, waits failed", implTier, func() phaseResult {
			p := race(18, 0)
			p.Lib = libCounts{LocalHits: 1, BarrierWaits: 5, WaitsFailed: 2, StreamBreaks: 1}
			return p
		}(),
			[]string{"0 of 900 reads", "answered 1 Get from", "2 of those waits failed", "broke 1 time,"}, []string{"SETs landed"}},
		{"library steady", implLibrary, phaseResult{Name: phaseSteady, Start: 1, End: 2, Requests: 1000, Hits: 950},
			[]string{"95.0% of 1000 requests were Redis hits"}, []string{"tier", "process memory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := explain(tc.impl, tc.p, nil)
			for _, w := range tc.want {
				require.Contains(t, s, w)
			}
			for _, n := range tc.not {
				require.NotContains(t, s, n)
			}
		})
	}
}

// TestReportIsSelfContained writes a report of made-up runs and checks
// its structure (the real run's report is also rendered by TestDemo).
func TestReportIsSelfContained(t *testing.T) {
	var rs []runResult
	for _, impl := range []string{implLibrary, implNaive, implTier} {
		r := runResult{Impl: impl}
		for i, name := range []string{phaseCold, phaseSteady, phaseHot, phaseRace, phaseOutage} {
			p := phaseResult{Name: name, Start: float64(i), End: float64(i + 1), Requests: 1000, Hits: 900, Queries: 100}
			switch name {
			case phaseCold:
				p.Cold = &coldResult{Gets: 256, Loads: 3}
			case phaseRace:
				p.Race = &raceResult{Rounds: 10, Arranged: 9, Users: 5}
			case phaseOutage:
				p.Outage = &outageResult{DownAt: 4.25, UpAt: 4.75, Recovered: true, Recovery: 0.1}
			}
			p.Sentence = explain(impl, p, r.Phases)
			r.Phases = append(r.Phases, p)
			for k := range 5 {
				r.Samples = append(r.Samples, sample{T: float64(i) + float64(k+1)/5, Phase: name, Requests: 100, Queries: 10,
					RPS: 500, QPS: 50, HitRate: 90, P50: time.Millisecond, P99: 5 * time.Millisecond})
			}
		}
		rs = append(rs, r)
	}
	path := filepath.Join(t.TempDir(), "report.html")
	require.NoError(t, writeReport(path, defaultConfig(), "made-up runs", rs))
	html, err := os.ReadFile(path)
	require.NoError(t, err)
	requireSelfContained(t, string(html))
	require.Contains(t, string(html), "made-up runs")
	require.Equal(t, 1, strings.Count(string(html), "<h2>Summary</h2>"))
	require.Contains(t, string(html), "The tier answered")

	// A skipped tier run: its phases say why, the tables say skipped.
	rs[2] = skippedRun(implTier, "the in-process tier needs CLIENT TRACKING")
	require.NoError(t, writeReport(path, defaultConfig(), "made-up runs", rs))
	html, err = os.ReadFile(path)
	require.NoError(t, err)
	requireSelfContained(t, string(html))
	require.Contains(t, string(html), "Skipped: the in-process tier needs CLIENT TRACKING.")
	require.NotContains(t, string(html), "The tier answered")
	require.Equal(t, len(phaseNames), strings.Count(string(html), `<td colspan="9" style="text-align: left">skipped</td>`))
	// Only the skipped run: the report is still written.
	require.NoError(t, writeReport(path, defaultConfig(), "made-up runs", rs[2:]))
}

func TestParseImpls(t *testing.T) {
	for in, want := range map[string][]string{
		"all":          {implLibrary, implNaive, implTier},
		"both":         {implLibrary, implNaive},
		"cache":        {implLibrary},
		"tier":         {implTier},
		"tier, cache":  {implTier, implLibrary},
		"naive,naive":  {implNaive},
		"cache,tier,x": nil,
		"":             nil,
	} {
		got, err := parseImpls(in)
		if want == nil {
			require.Error(t, err, in)
			continue
		}
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
}
