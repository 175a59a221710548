package writebehind

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/f4df6ac3/cache/internal/promreg"
)

// Results of an Add, the result label of cache_writebehind_adds_total.
const (
	resultCounted     = "counted"      // counted now
	resultDuplicate   = "duplicate"    // a retry of a call already counted
	resultBacklogFull = "backlog_full" // refused: MaxPendingEntries reached
	resultError       = "error"        // Redis error: not known to be counted
)

// CounterStats is a snapshot of a Counter's counters.
type CounterStats struct {
	Counted     uint64 // calls of Add/AddOnce counted
	Duplicates  uint64 // calls found counted already by their token (an AddOnce retry, or a resend after a lost reply): not counted again
	BacklogFull uint64 // calls refused with ErrBacklogFull
	Errors      uint64 // calls that returned a Redis error
}

type counterStats struct {
	counted, duplicates, backlogFull, errors atomic.Uint64
}

func (s *counterStats) count(c *Counter, result string) {
	switch result {
	case resultCounted:
		s.counted.Add(1)
	case resultDuplicate:
		s.duplicates.Add(1)
	case resultBacklogFull:
		s.backlogFull.Add(1)
	default:
		s.errors.Add(1)
	}
	if c.prom != nil {
		c.prom.adds.WithLabelValues(c.name, result).Inc()
	}
}

// Stats returns a snapshot of the counter's counters.
func (c *Counter) Stats() CounterStats {
	return CounterStats{
		Counted:     c.stats.counted.Load(),
		Duplicates:  c.stats.duplicates.Load(),
		BacklogFull: c.stats.backlogFull.Load(),
		Errors:      c.stats.errors.Load(),
	}
}

// FlusherStats is a snapshot of a Flusher's counters and gauges. Pending
// and Lag come from the last refresh (every FlusherOptions.StatsInterval
// in Run, at the end of every FlushOnce) and cover every flusher's share.
type FlusherStats struct {
	Applied     uint64 // log entries (calls of Add) applied to MySQL by this flusher
	Skipped     uint64 // entries found already applied (a crash after commit, before ack) and only acknowledged
	Batches     uint64 // transactions committed
	Rows        uint64 // keys in committed batches: ApplyFunc's row writes
	Claimed     uint64 // entries taken over from other flushers (XAUTOCLAIM)
	Errors      uint64 // failed batches and passes; their entries stay pending
	RedisLosses uint64 // times a shard's log was found to have lost entries already applied (Redis restarted without them)

	Pending int64         // log entries counted and not yet applied, all shards
	Lag     time.Duration // age of the oldest of them; 0 when none
}

type flusherStats struct {
	applied, skipped, batches, rows, claimed, errors, losses atomic.Uint64
	pending                                                  atomic.Int64
	lag                                                      atomic.Int64 // nanoseconds
}

// Stats returns a snapshot of the flusher's counters and gauges.
func (f *Flusher) Stats() FlusherStats {
	s := &f.stats
	return FlusherStats{
		Applied: s.applied.Load(), Skipped: s.skipped.Load(), Batches: s.batches.Load(),
		Rows: s.rows.Load(), Claimed: s.claimed.Load(), Errors: s.errors.Load(),
		RedisLosses: s.losses.Load(),
		Pending:     s.pending.Load(), Lag: time.Duration(s.lag.Load()),
	}
}

// counterProm is a Counter's Prometheus metric:
//
//	cache_writebehind_adds_total{counter,result}   calls of Add by result
//	                                               (counted, duplicate, backlog_full, error)
type counterProm struct {
	adds *prometheus.CounterVec
}

// newCounterProm registers the metric with reg (or reuses the one another
// counter registered there) and creates counter's series at 0, so that
// they exist before the first call.
func newCounterProm(reg prometheus.Registerer, counter string) (*counterProm, error) {
	adds, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cache_writebehind_adds_total",
		Help: "Calls of a write-behind counter's Add, by result (counted, duplicate, backlog_full, error).",
	}, []string{"counter", "result"}))
	if err != nil {
		return nil, err
	}
	for _, r := range []string{resultCounted, resultDuplicate, resultBacklogFull, resultError} {
		adds.WithLabelValues(counter, r)
	}
	return &counterProm{adds: adds}, nil
}

// flusherProm are a Flusher's Prometheus metrics, labelled by counter:
//
//	cache_writebehind_flushed_total{counter}         entries applied to MySQL
//	cache_writebehind_batches_total{counter}         transactions committed
//	cache_writebehind_batch_entries{counter}         histogram: entries per committed batch
//	cache_writebehind_batch_rows{counter}            histogram: keys (row writes) per committed batch
//	cache_writebehind_claimed_total{counter}         entries taken over from other flushers
//	cache_writebehind_flush_errors_total{counter}    failed batches and passes
//	cache_writebehind_redis_losses_total{counter}    logs found to have lost applied entries
//	cache_writebehind_pending_entries{counter}       entries counted, not yet applied
//	cache_writebehind_lag_seconds{counter}           age of the oldest of them
type flusherProm struct {
	flushed, batches, claimed, errors, losses *prometheus.CounterVec
	batchEntries, batchRows                   *prometheus.HistogramVec
	pending, lag                              *prometheus.GaugeVec
}

// newFlusherProm registers the metrics with reg (or reuses those another
// flusher registered there) and creates the series of the counter name, so that they
// exist before the first flush.
func newFlusherProm(reg prometheus.Registerer, name string) (*flusherProm, error) {
	label := []string{"counter"}
	counter := func(metric, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: metric, Help: help}, label)
	}
	gauge := func(metric, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metric, Help: help}, label)
	}
	hist := func(metric, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: metric, Help: help, Buckets: prometheus.ExponentialBuckets(1, 4, 10), // 1 .. 262144
		}, label)
	}
	p := &flusherProm{
		flushed:      counter("cache_writebehind_flushed_total", "Write-behind log entries (calls of Add) applied to MySQL."),
		batches:      counter("cache_writebehind_batches_total", "Write-behind batches committed to MySQL."),
		claimed:      counter("cache_writebehind_claimed_total", "Write-behind entries taken over from another flusher (XAUTOCLAIM)."),
		errors:       counter("cache_writebehind_flush_errors_total", "Failed write-behind batches and passes; their entries stay pending."),
		losses:       counter("cache_writebehind_redis_losses_total", "Times a write-behind log was found to have lost entries already applied (Redis restarted without them)."),
		batchEntries: hist("cache_writebehind_batch_entries", "Log entries per committed write-behind batch."),
		batchRows:    hist("cache_writebehind_batch_rows", "Keys (row writes) per committed write-behind batch."),
		pending:      gauge("cache_writebehind_pending_entries", "Write-behind entries counted in Redis and not yet applied to MySQL."),
		lag:          gauge("cache_writebehind_lag_seconds", "Age of the oldest write-behind entry not yet applied to MySQL."),
	}
	var err error
	for _, c := range []**prometheus.CounterVec{&p.flushed, &p.batches, &p.claimed, &p.errors, &p.losses} {
		if *c, err = register(reg, *c); err != nil {
			return nil, err
		}
	}
	for _, h := range []**prometheus.HistogramVec{&p.batchEntries, &p.batchRows} {
		if *h, err = register(reg, *h); err != nil {
			return nil, err
		}
	}
	for _, g := range []**prometheus.GaugeVec{&p.pending, &p.lag} {
		if *g, err = register(reg, *g); err != nil {
			return nil, err
		}
	}
	for _, c := range []*prometheus.CounterVec{p.flushed, p.batches, p.claimed, p.errors, p.losses} {
		c.WithLabelValues(name)
	}
	p.batchEntries.WithLabelValues(name)
	p.batchRows.WithLabelValues(name)
	p.pending.WithLabelValues(name)
	p.lag.WithLabelValues(name)
	return p, nil
}

// register registers c through promreg, naming the package in errors.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("writebehind: registering %w", err)
	}
	return c, nil
}
