package cdc

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are a relay's running totals.
type counters struct {
	leader         atomic.Bool
	terms          atomic.Uint64
	events         atomic.Uint64
	rowEvents      atomic.Uint64
	rows           atomic.Uint64
	skipped        atomic.Uint64
	transactions   atomic.Uint64
	invalidations  atomic.Uint64
	batches        atomic.Uint64
	applyErrors    atomic.Uint64
	reconnects     atomic.Uint64
	checkpoints    atomic.Uint64
	statements     atomic.Uint64
	emptyKeys      atomic.Uint64
	repeats        atomic.Uint64
	repeatsDropped atomic.Uint64
	eventTime      atomic.Int64 // Unix seconds of the last event's header
}

// Stats is a snapshot of a relay's state and counters. Rates (events/s,
// invalidations/s) are the counters' differences over time.
type Stats struct {
	// Leader is set while this relay leads (the others are standbys).
	Leader bool
	// Terms counts the times this relay became the leader.
	Terms uint64

	Events        uint64 // binlog events read
	RowEvents     uint64 // rows events of tables with a rule
	Rows          uint64 // rows of those events
	Skipped       uint64 // rows events of tables without a rule (not decoded)
	Transactions  uint64 // transaction ends read
	Invalidations uint64 // keys invalidated (a key counts once per batch)
	Batches       uint64 // InvalidateVersions calls that succeeded
	ApplyErrors   uint64 // InvalidateVersions calls that failed (and were retried)
	Reconnects    uint64 // binlog streams that ended in an error and were reopened
	Checkpoints   uint64 // checkpoints written
	// Statements counts writes logged as statements (a session with
	// binlog_format not ROW, or TRUNCATE TABLE): their rows were not
	// invalidated.
	Statements uint64
	// EmptyKeys counts rows whose key was "" (nothing to invalidate).
	EmptyKeys uint64
	// Repeats counts the second invalidations of Options.Reinvalidate,
	// RepeatsDropped those dropped because too many waited.
	Repeats, RepeatsDropped uint64

	// Applied is the position up to which every invalidation is applied;
	// Checkpoint the last one stored, CheckpointAge how long ago.
	Applied       Position
	Checkpoint    Position
	CheckpointAge time.Duration
	// Server is the server's position at the last poll (every second), and
	// Behind how many transactions of it are not applied yet (MariaDB GTIDs
	// only; -1 where unknown).
	Server Position
	Behind int64
	// EventLag is now minus the timestamp of the last event read (whole
	// seconds in the binlog): how far behind the relay reads while events
	// flow. An idle stream's heartbeats carry no time, so it grows while
	// nothing is written; read it together with Behind.
	EventLag time.Duration
}

// Stats returns a snapshot of the relay's state and counters.
func (r *Relay) Stats() Stats {
	st := Stats{
		Leader:         r.stats.leader.Load(),
		Terms:          r.stats.terms.Load(),
		Events:         r.stats.events.Load(),
		RowEvents:      r.stats.rowEvents.Load(),
		Rows:           r.stats.rows.Load(),
		Skipped:        r.stats.skipped.Load(),
		Transactions:   r.stats.transactions.Load(),
		Invalidations:  r.stats.invalidations.Load(),
		Batches:        r.stats.batches.Load(),
		ApplyErrors:    r.stats.applyErrors.Load(),
		Reconnects:     r.stats.reconnects.Load(),
		Checkpoints:    r.stats.checkpoints.Load(),
		Statements:     r.stats.statements.Load(),
		EmptyKeys:      r.stats.emptyKeys.Load(),
		Repeats:        r.stats.repeats.Load(),
		RepeatsDropped: r.stats.repeatsDropped.Load(),
		Behind:         -1,
	}
	if ts := r.stats.eventTime.Load(); ts > 0 {
		st.EventLag = max(0, time.Since(time.Unix(ts, 0)))
	}
	r.mu.Lock()
	st.Applied, st.Checkpoint, st.Server = r.applied, r.saved, r.server
	if !r.savedAt.IsZero() {
		st.CheckpointAge = time.Since(r.savedAt)
	}
	r.mu.Unlock()
	if st.Server != (Position{}) {
		st.Behind = behind(r.s.flavor, st.Applied, st.Server)
	}
	return st
}

// Collector returns a Prometheus collector of the relay's Stats, labelled
// relay=<Name>; register it on your registry (the relays of different
// Names can share one):
//
//	cache_cdc_leader{relay}                  1 while this relay leads
//	cache_cdc_events_total{relay}            binlog events read
//	cache_cdc_rows_total{relay}              rows of tables with a rule
//	cache_cdc_invalidations_total{relay}     keys invalidated
//	cache_cdc_apply_errors_total{relay}      failed (retried) invalidation calls
//	cache_cdc_reconnects_total{relay}        binlog streams reopened
//	cache_cdc_checkpoint_age_seconds{relay}  time since the checkpoint was stored
//	cache_cdc_event_lag_seconds{relay}       now minus the last event's timestamp
//	cache_cdc_behind_transactions{relay}     server transactions not yet applied (-1: unknown)
func (r *Relay) Collector() prometheus.Collector {
	labels := prometheus.Labels{"relay": r.s.name}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("cache_cdc_"+name, help, nil, labels)
	}
	return &collector{r: r, descs: []*prometheus.Desc{
		desc("leader", "1 while this relay leads, 0 while it is a standby."),
		desc("events_total", "Binlog events read."),
		desc("rows_total", "Changed rows of tables with a rule."),
		desc("invalidations_total", "Keys invalidated."),
		desc("apply_errors_total", "Failed (and retried) invalidation calls."),
		desc("reconnects_total", "Binlog streams that failed and were reopened."),
		desc("checkpoint_age_seconds", "Time since the checkpoint was last stored."),
		desc("event_lag_seconds", "Now minus the timestamp of the last binlog event read."),
		desc("behind_transactions", "Server transactions not yet applied (-1: unknown)."),
	}}
}

type collector struct {
	r     *Relay
	descs []*prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Stats()
	leader := 0.0
	if st.Leader {
		leader = 1
	}
	vals := []struct {
		t prometheus.ValueType
		v float64
	}{
		{prometheus.GaugeValue, leader},
		{prometheus.CounterValue, float64(st.Events)},
		{prometheus.CounterValue, float64(st.Rows)},
		{prometheus.CounterValue, float64(st.Invalidations)},
		{prometheus.CounterValue, float64(st.ApplyErrors)},
		{prometheus.CounterValue, float64(st.Reconnects)},
		{prometheus.GaugeValue, st.CheckpointAge.Seconds()},
		{prometheus.GaugeValue, st.EventLag.Seconds()},
		{prometheus.GaugeValue, float64(st.Behind)},
	}
	for i, d := range c.descs {
		ch <- prometheus.MustNewConstMetric(d, vals[i].t, vals[i].v)
	}
}
