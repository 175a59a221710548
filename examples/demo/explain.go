package main

import (
	"fmt"
	"strings"
	"time"
)

// explain is what a phase measured, in words: every number comes from p,
// and a claim about why is only made when p's numbers show it.
func explain(impl string, p phaseResult, earlier []phaseResult) string {
	if p.Skipped != "" {
		return "Skipped: " + p.Skipped + "."
	}
	lib := impl == implLibrary || impl == implTier
	var s string
	switch p.Name {
	case phaseCold:
		s = explainCold(lib, p)
	case phaseSteady:
		s = explainSteady(impl, p)
	case phaseHot:
		s = explainHot(lib, p)
	case phaseRace:
		s = explainRace(lib, p)
	case phaseOutage:
		s = explainOutage(lib, p)
	}
	if impl == implTier {
		s += explainTier(p)
	}
	return s
}

func explainSteady(impl string, p phaseResult) string {
	var b strings.Builder
	if impl == implTier {
		fmt.Fprintf(&b, "%.1f%% of %d requests were cache hits (%.1f%% answered from process memory, %.1f%% by Redis)",
			p.HitRate(), p.Requests, pct(p.Lib.LocalHits, p.Requests), pct(p.Hits-p.Lib.LocalHits, p.Requests))
	} else {
		fmt.Fprintf(&b, "%.1f%% of %d requests were Redis hits", p.HitRate(), p.Requests)
	}
	fmt.Fprintf(&b, "; the database saw %d queries (%.0f/s, %.1f per 1,000 requests), p50 %s, p99 %s.",
		p.Queries, p.QPS(), p.QueriesPer1k(), fmtDur(p.P50), fmtDur(p.P99))
	return b.String()
}

// explainTier is what the in-process tier did in the phase, after the
// phase's sentence.
func explainTier(p phaseResult) string {
	l := p.Lib
	var b strings.Builder
	fmt.Fprintf(&b, " The tier answered %d Get%s from process memory, each after a barrier PING (%d strict Gets waited for one",
		l.LocalHits, plural(l.LocalHits, "", "s"), l.BarrierWaits)
	if l.WaitsFailed > 0 {
		fmt.Fprintf(&b, "; %d of those waits failed and the Get read Redis", l.WaitsFailed)
	}
	b.WriteString(")")
	if l.StreamBreaks > 0 {
		fmt.Fprintf(&b, "; the invalidation stream broke %d time%s, each emptying the tier", l.StreamBreaks, plural(l.StreamBreaks, "", "s"))
	}
	b.WriteString(".")
	return b.String()
}

func explainCold(lib bool, p phaseResult) string {
	c := p.Cold
	var b strings.Builder
	fmt.Fprintf(&b, "%d Gets of the same cold user, from every process at once, cost %d database quer%s", c.Gets, c.Loads, plural(c.Loads, "y", "ies"))
	switch {
	case lib:
		fmt.Fprintf(&b, ": %d Gets waited on a load of their own process and %d load%s waited on another process's lease",
			c.Lib.Coalesced, c.Lib.LeaseWaits, plural(c.Lib.LeaseWaits, "", "s"))
		if c.Lib.RedisErrors > 0 {
			fmt.Fprintf(&b, "; %d Redis calls failed (the Gets behind them went to the database)", c.Lib.RedisErrors)
		}
		b.WriteString(".")
	case c.Loads > 1:
		fmt.Fprintf(&b, ": the textbook version has no coalescing, so %d of the Gets missed and ran their own SELECT and SET (a cache stampede).", c.Loads)
	default:
		b.WriteString(": the first fill landed before the other Gets read Redis, so this run shows no stampede.")
	}
	fmt.Fprintf(&b, " Over the rest of the phase Zipf traffic warmed the cache: %.1f%% hits, %.1f queries per 1,000 requests.",
		p.HitRate(), p.QueriesPer1k())
	return b.String()
}

func explainHot(lib bool, p phaseResult) string {
	expiries := p.Seconds() / hotTTL.Seconds()
	var b strings.Builder
	fmt.Fprintf(&b, "Everyone read one user whose TTL is %v for %.1f s (%.0f TTLs): the database saw %d quer%s (%.1f per 1,000 requests, %.1f per TTL)",
		hotTTL, p.Seconds(), expiries, p.Queries, plural(p.Queries, "y", "ies"), p.QueriesPer1k(), float64(p.Queries)/max(expiries, 1))
	if lib {
		fmt.Fprintf(&b, "; %d background refreshes started before expiry and %d Gets waited on a load of their own process.",
			p.Lib.Refreshes, p.Lib.Coalesced)
	} else if float64(p.Queries) > 1.5*expiries {
		b.WriteString("; with no coalescing, every reader that missed after an expiry, before the first SET, ran its own SELECT.")
	} else {
		b.WriteString(".")
	}
	return b.String()
}

func explainRace(lib bool, p phaseResult) string {
	r := p.Race
	var b strings.Builder
	fmt.Fprintf(&b, "%d time%s a hot user's cache entry was evicted (as an expiry would) and the user renamed (%d write%s committed). ",
		r.Rounds, plural(r.Rounds, "", "s"), r.Writes, plural(r.Writes, "", "s"))
	if r.Arranged == 0 {
		fmt.Fprintf(&b, "The race could not be set up in this run: no reader SELECTed the evicted user before its write, with a read of the new row after it, each within %v; so this run does not test the interleaving. ", r.Wait)
	} else {
		fmt.Fprintf(&b, "In %d of those rounds a reader SELECTed the old row before the write and was held until a read after the write had returned the new row (%d reads held), so its fill came last. ", r.Arranged, r.Held)
	}
	fmt.Fprintf(&b, "%d of %d reads of these users returned a version older than a write completed before the read began, and afterwards %d of %d written users were still served older than the table",
		r.StaleReads, r.Reads, r.StaleUsers, r.Users)
	if r.DBStaleReads > 0 {
		fmt.Fprintf(&b, " (the database itself answered %d SELECT%s with a row older than a write that had returned before the SELECT began: the embedded go-mysql-server does not show every commit to the reads that follow it, and a load that reads such a row hands it on; run with -mysql against MySQL or MariaDB to see the cache alone)",
			r.DBStaleReads, plural(r.DBStaleReads, "", "s"))
	}
	switch {
	case lib:
		fmt.Fprintf(&b, "; the library rejected %d fill%s that a write had overtaken", p.Lib.StaleSetsPrevented, plural(p.Lib.StaleSetsPrevented, "", "s"))
		if p.Lib.RedisErrors > 0 {
			fmt.Fprintf(&b, "; %d Redis call%s failed in the phase", p.Lib.RedisErrors, plural(p.Lib.RedisErrors, "", "s"))
		}
		if p.Lib.InvalidationsQueued > 0 {
			fmt.Fprintf(&b, " and %d invalidation%s were queued for retry: while one waits, other processes can still read the older entry",
				p.Lib.InvalidationsQueued, plural(p.Lib.InvalidationsQueued, "", "s"))
		}
		b.WriteString(".")
	case r.StaleUsers > 0:
		b.WriteString(": the held readers' SETs landed after the writer's DEL and after the fresh fill, and stay until the next write or the TTL.")
	case r.Arranged > 0:
		b.WriteString(": the held readers' SETs did not leave a stale value behind in this run.")
	default:
		b.WriteString(".")
	}
	return b.String()
}

func explainOutage(lib bool, p phaseResult) string {
	o := p.Outage
	var b strings.Builder
	fmt.Fprintf(&b, "Redis was stopped for %.1f s: ", o.UpAt-o.DownAt)
	switch {
	case o.Down.Errors == 0:
		fmt.Fprintf(&b, "none of %d requests failed", o.Down.Requests)
	case o.Down.Errors == o.Down.Requests:
		fmt.Fprintf(&b, "all %d requests failed", o.Down.Requests)
	default:
		fmt.Fprintf(&b, "%d of %d requests failed", o.Down.Errors, o.Down.Requests)
	}
	fmt.Fprintf(&b, " (p50 %s, p99 %s)", fmtDur(o.Down.P50), fmtDur(o.Down.P99))
	fmt.Fprintf(&b, ", and the database saw %d queries (%.0f per 1,000 requests)", o.DownQueries, per1k(o.DownQueries, o.Down.Requests))
	if lib {
		fmt.Fprintf(&b, "; the breakers (one per process) opened %d time%s, and %d Redis calls were not made while they were open.",
			o.Lib.BreakerOpened, plural(o.Lib.BreakerOpened, "", "s"), o.Lib.RedisSkipped)
	} else if o.Down.Errors > 0 {
		b.WriteString(": the textbook version has no fallback, a Redis error fails the request.")
	} else if down := time.Duration((o.UpAt - o.DownAt) * float64(time.Second)); o.Down.Requests > 0 && o.Down.P50 >= down/2 {
		b.WriteString(": with no Redis timeout of its own, its Gets waited on go-redis's dial retries, which outlasted the outage.")
	} else {
		b.WriteString(".")
	}
	fmt.Fprintf(&b, " Redis came back at %.1f s; ", o.UpAt)
	if o.Steady < 50 {
		fmt.Fprintf(&b, "(the steady phase's hit rate was only %.1f%%, so what follows says little) ", o.Steady)
	}
	if o.Threshold <= 0 {
		fmt.Fprintf(&b, "the steady phase had no hits (%.1f%%), so there is no hit rate to recover to", o.Steady)
	} else if o.Recovered {
		fmt.Fprintf(&b, "the hit rate was back to ≥ %.0f%% (%.0f%% of the steady phase's %.1f%%) %.2f s later",
			o.Threshold, 100*recoveryShare, o.Steady, o.Recovery)
	} else {
		fmt.Fprintf(&b, "the hit rate had not recovered to %.0f%% (%.0f%% of the steady phase's %.1f%%) %.1f s later, when the phase ended",
			o.Threshold, 100*recoveryShare, o.Steady, o.After)
	}
	fmt.Fprintf(&b, "; in the phase's last %v it was %.1f%% with p50 %s.", o.Window, o.EndHitRate, fmtDur(o.End.P50))
	return b.String()
}

// recoveryText is the outage's recovery in a table cell.
func recoveryText(p phaseResult) string {
	o := p.Outage
	switch {
	case p.Skipped != "" || o == nil:
		return "skipped"
	case o.Threshold <= 0:
		return "not measured (no hits before)"
	case o.Recovered:
		return fmt.Sprintf("%.2f s", o.Recovery)
	default:
		return fmt.Sprintf("not within %.1f s", o.After)
	}
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// fmtDur prints a latency in milliseconds, to a precision that suits it.
func fmtDur(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", ms(d))
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%.1f ms", ms(d))
	}
	return fmt.Sprintf("%.0f ms", ms(d))
}
