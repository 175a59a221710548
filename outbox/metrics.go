package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/f4df6ac3/cache/internal/promreg"
)

// Stats is a snapshot of a Relay's counters and gauges.
//
// The gauges come from the last refresh (every RelayOptions.StatsInterval
// in Run, at the end of every RelayOnce) and cover the whole table, not
// just this relay's share.
type Stats struct {
	Applied uint64 // rows applied to Redis and deleted by this relay
	Errors  uint64 // failed attempts (Invalidate, SQL or commit errors); their rows were kept

	Pending int64 // rows of this relay's loaders in the outbox
	Unowned int64 // rows of namespaces this relay was not given (left alone)
	// UnownedLag is the age of the oldest unowned row; 0 when none. Rows
	// of a service sharing the table come and go; a growing UnownedLag
	// means rows that no relay applies.
	UnownedLag time.Duration
	Lag        time.Duration // age of the oldest pending row; 0 when none

	Parked int // loaders whose Invalidate failed, skipped until their backoff ends (at the end of the last drain)
}

// stats holds a Relay's counters and its last gauge readings.
type stats struct {
	applied atomic.Uint64
	errors  atomic.Uint64
	pending atomic.Int64
	unowned atomic.Int64
	lag     atomic.Int64 // nanoseconds
	// unownedLag: nanoseconds; unownedWarned: the warning was logged for
	// the current run of stale unowned rows.
	unownedLag    atomic.Int64
	unownedWarned atomic.Bool
	parked        atomic.Int64
}

// Stats returns a snapshot of the relay's counters and gauges.
func (r *Relay) Stats() Stats {
	return Stats{
		Applied:    r.stats.applied.Load(),
		Errors:     r.stats.errors.Load(),
		Pending:    r.stats.pending.Load(),
		Unowned:    r.stats.unowned.Load(),
		UnownedLag: time.Duration(r.stats.unownedLag.Load()),
		Lag:        time.Duration(r.stats.lag.Load()),
		Parked:     int(r.stats.parked.Load()),
	}
}

// UnownedWarnAge is how long a row of a namespace a relay does not know may
// wait before the relay logs a warning (another service's relay normally
// takes its rows within its poll interval).
const UnownedWarnAge = time.Minute

// refreshStats reads the gauges from the table: one COUNT over it (the
// outbox is meant to stay small; this is why Run does it at most every
// StatsInterval).
func (r *Relay) refreshStats(ctx context.Context) error {
	var total, pending int64
	var lagMicros, unownedMicros sql.NullInt64
	err := r.db.QueryRowContext(ctx, r.statsQuery, r.statsArgs...).Scan(&total, &pending, &lagMicros, &unownedMicros)
	if err != nil {
		return fmt.Errorf("outbox: reading stats: %w", err)
	}
	lag := time.Duration(max(lagMicros.Int64, 0)) * time.Microsecond // 0 when NULL: nothing pending
	unownedLag := time.Duration(max(unownedMicros.Int64, 0)) * time.Microsecond
	unowned := total - pending
	r.stats.pending.Store(pending)
	r.stats.lag.Store(int64(lag))
	r.stats.unowned.Store(unowned)
	r.stats.unownedLag.Store(int64(unownedLag))
	// Another service's rows come and go: only rows that wait long are
	// worth a warning, once per such spell.
	switch stale := unownedLag > UnownedWarnAge; {
	case stale && !r.stats.unownedWarned.Swap(true):
		known := make([]string, len(r.targets))
		for i, t := range r.targets {
			known[i] = t.ns
		}
		r.logger.Warn("outbox: rows of namespaces this relay does not know have waited long; does a relay own them?",
			"table", r.table, "rows", unowned, "oldest", unownedLag.Round(time.Second), "known", known)
	case !stale:
		r.stats.unownedWarned.Store(false)
	}
	if r.prom != nil {
		r.prom.pending.WithLabelValues(r.table).Set(float64(pending))
		r.prom.unowned.WithLabelValues(r.table).Set(float64(unowned))
		r.prom.lag.WithLabelValues(r.table).Set(lag.Seconds())
	}
	return nil
}

// promMetrics are a relay's Prometheus metrics, labelled by outbox table:
//
//	cache_outbox_applied_total{table}   rows applied to Redis and deleted
//	cache_outbox_errors_total{table}    failed relay attempts
//	cache_outbox_pending_rows{table}    rows waiting for a relay
//	cache_outbox_unowned_rows{table}    rows of namespaces the relay does not know
//	cache_outbox_lag_seconds{table}     age of the oldest pending row
//	cache_outbox_parked_loaders{table}  loaders skipped after a failed Invalidate
type promMetrics struct {
	applied *prometheus.CounterVec
	errors  *prometheus.CounterVec
	pending *prometheus.GaugeVec
	unowned *prometheus.GaugeVec
	lag     *prometheus.GaugeVec
	parked  *prometheus.GaugeVec
}

// newPromMetrics registers the metrics with reg, or reuses those another
// relay registered there.
func newPromMetrics(reg prometheus.Registerer) (*promMetrics, error) {
	label := []string{"table"}
	p := &promMetrics{
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_outbox_applied_total",
			Help: "Outbox rows applied to Redis (invalidated) and deleted.",
		}, label),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_outbox_errors_total",
			Help: "Failed outbox relay attempts (Redis or SQL errors); their rows are retried.",
		}, label),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_outbox_pending_rows",
			Help: "Outbox rows waiting for a relay.",
		}, label),
		unowned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_outbox_unowned_rows",
			Help: "Outbox rows of namespaces the relay does not know.",
		}, label),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_outbox_lag_seconds",
			Help: "Age of the oldest pending outbox row.",
		}, label),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_outbox_parked_loaders",
			Help: "Loaders whose invalidations failed, skipped by the relay until their backoff ends.",
		}, label),
	}
	var err error
	if p.applied, err = register(reg, p.applied); err != nil {
		return nil, err
	}
	if p.errors, err = register(reg, p.errors); err != nil {
		return nil, err
	}
	if p.pending, err = register(reg, p.pending); err != nil {
		return nil, err
	}
	if p.unowned, err = register(reg, p.unowned); err != nil {
		return nil, err
	}
	if p.lag, err = register(reg, p.lag); err != nil {
		return nil, err
	}
	if p.parked, err = register(reg, p.parked); err != nil {
		return nil, err
	}
	return p, nil
}

// register registers c through promreg, naming the package in errors.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("outbox: registering %w", err)
	}
	return c, nil
}
