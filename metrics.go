package cache

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/f4df6ac3/cache/internal/promreg"
)

// Event is something a Loader counts.
type Event int

// Events. The first four are the results of a Get; the rest are what
// happened along the way.
const (
	EventHit                 Event = iota // answered from Redis
	EventMiss                             // answered by a load (this caller's or a shared one)
	EventNegativeHit                      // answered ErrNotFound from a cached negative entry
	EventStale                            // answered with an expired or invalidated value (stale serving)
	EventBypass                           // answered by a load without reading Redis (read bypass on, or the key's invalidation is queued)
	EventCoalesced                        // a Get waited on a load another Get in this process started
	EventLeaseWait                        // a load waited on another process's lease
	EventStaleSetPrevented                // a fill was rejected: its lease was voided or the stored version is newer
	EventCorruptEntry                     // an entry could not be decoded; it was treated as a miss and replaced
	EventRedisError                       // a Redis call failed (the caller was answered from the database)
	EventOversize                         // a value larger than MaxValueBytes was not cached
	EventEncodeError                      // a value could not be encoded; it was not cached
	EventInvalidationQueued               // WriteThrough could not reach Redis; the invalidation was queued
	EventInvalidationRetried              // a queued invalidation was applied
	EventInvalidationDropped              // a queued invalidation was given up (queue full, or the Loader closed)
	EventRedisSkipped                     // a Redis call was not made: the circuit breaker is open
	EventBreakerOpen                      // the circuit breaker opened
	EventBreakerHalfOpen                  // the circuit breaker let a probe through
	EventBreakerClosed                    // the circuit breaker closed: Redis is back
	EventRefresh                          // a background refresh started (early refresh or stale-while-revalidate)
	EventReadBypassOn                     // SetReadBypass(true)
	EventReadBypassOff                    // SetReadBypass(false)
	EventStaleEntryFound                  // Reconcile found an entry that differs from the database
	EventSampled                          // a sampled hit was checked against the database (Options.SampleRate)
	EventInconsistent                     // a sampled entry still differed from the database after SampleDelay
	EventMigrated                         // a miss was answered from the previous key format (Options.PreviousKeyPrefix)
	EventBudgetSpent                      // a Redis call was not made: the call's RedisTimeout was spent by the calls before it
	EventLocalHit                         // answered from the in-process tier (Options.Local), not counted as a hit
	numEvents
)

var eventNames = [numEvents]string{
	"hit", "miss", "negative_hit", "stale", "bypass", "coalesced", "lease_wait",
	"stale_set_prevented", "corrupt_entry", "redis_error", "oversize",
	"encode_error", "invalidation_queued", "invalidation_retried",
	"invalidation_dropped", "redis_skipped", "breaker_open",
	"breaker_half_open", "breaker_closed", "refresh", "read_bypass_on",
	"read_bypass_off", "stale_entry_found", "sampled", "inconsistent",
	"migrated", "budget_spent", "local_hit",
}

// String returns the event's metric label.
func (e Event) String() string {
	if e < 0 || e >= numEvents {
		return "unknown"
	}
	return eventNames[e]
}

// isRequest reports whether e is the result of a Get.
func (e Event) isRequest() bool { return e <= EventBypass || e == EventLocalHit }

// Recorder receives a Loader's metrics. Implementations must be safe for
// concurrent use and fast: they are called on the hit path.
type Recorder interface {
	// Count records one event of the named loader.
	Count(loader string, e Event)
	// ObserveLoad records one call of the LoadFunc: how long it took and how
	// it ended (nil, an error matching ErrNotFound, or another error).
	ObserveLoad(loader string, d time.Duration, err error)
}

// PendingRecorder is implemented by Recorders that also track how many
// invalidations a Loader has queued for retry (see WriteThrough): the
// Loader calls InvalidationsPending with the number queued whenever it
// changes. Prometheus implements it as cache_invalidations_pending.
type PendingRecorder interface {
	InvalidationsPending(loader string, n int)
}

// RedisRecorder is implemented by Recorders that also observe the
// Loader's Redis calls: each call (a command, a script or a pipeline: one
// round trip) that was sent, with how long it took and, when Redis failed
// (a timeout, a lost connection, a reply such as OOM or LOADING that says
// it cannot serve), the failure; err is nil when Redis answered, error
// replies such as WRONGTYPE included. Calls the circuit breaker skipped,
// and calls whose caller left before the answer, are not observed.
// Prometheus implements it as cache_redis_duration_seconds.
type RedisRecorder interface {
	ObserveRedis(loader string, d time.Duration, err error)
}

// WriteRecorder is implemented by Recorders that also count Set,
// Invalidate (and InvalidateVersions) and WriteThrough calls by outcome.
// op is OpSet, OpInvalidate or OpWriteThrough. Calls refused before they
// start (an empty key, a closed Loader, a negative version) are not
// counted. Prometheus implements it as cache_writes_total.
type WriteRecorder interface {
	CountWrite(loader string, op Op, r WriteResult)
}

// LocalRecorder is implemented by Recorders that also export the
// in-process tier's metrics (Options.Local). New calls AttachLocal once
// for a Loader with the tier on: stats returns the tier's LocalStats
// (cheap, safe for concurrent use), to be read when the metrics are
// collected rather than on every event; Close calls the detach function
// it returned. ObserveBarrier is called with the latency of each barrier
// that returned (from its PING to its return), on the tier's stream
// goroutine: it must be fast. Prometheus implements it as the
// cache_local_* metrics.
type LocalRecorder interface {
	AttachLocal(loader string, stats func() LocalStats) (detach func())
	ObserveBarrier(loader string, d time.Duration)
}

// WriteResult is how a Set, Invalidate or WriteThrough ended.
type WriteResult int

// Write results.
const (
	WriteStored      WriteResult = iota // Set, WriteThrough: the value was stored
	WriteInvalidated                    // Invalidate: applied; Set, WriteThrough: not stored (a newer version or another writer meanwhile, a value that cannot be cached, a failed set) but invalidated
	WriteQueued                         // the invalidation could not reach Redis and was queued (ErrQueued)
	WriteFailed                         // Set: Redis failed; WriteThrough: the write function failed (Redis untouched)
	numWriteResults
)

var writeResultNames = [numWriteResults]string{"stored", "invalidated", "queued", "error"}

// String returns the result's metric label.
func (r WriteResult) String() string {
	if r < 0 || r >= numWriteResults {
		return "unknown"
	}
	return writeResultNames[r]
}

// observeRedis reports one Redis call to the RedisRecorder, if any.
func (l *Loader[T]) observeRedis(d time.Duration, err error) {
	if l.s.redisRecorder == nil || callerLeft(err) {
		return
	}
	if answered(err) { // redis.Nil too
		err = nil
	}
	l.s.redisRecorder.ObserveRedis(l.name, d, err)
}

// countWrite reports the outcome of a write call to the WriteRecorder, if
// any.
func (l *Loader[T]) countWrite(op Op, r WriteResult) {
	if l.s.writeRecorder != nil {
		l.s.writeRecorder.CountWrite(l.name, op, r)
	}
}

type nopRecorder struct{}

func (nopRecorder) Count(string, Event)                      {}
func (nopRecorder) ObserveLoad(string, time.Duration, error) {}

// Stats is a snapshot of a Loader's counters since New.
type Stats struct {
	Hits                 uint64 // Gets answered from Redis
	Misses               uint64 // Gets answered by a load
	NegativeHits         uint64 // Gets answered ErrNotFound from Redis
	Stale                uint64 // Gets answered with a stale value
	Bypassed             uint64 // Gets answered by a load without reading Redis
	Loads                uint64 // LoadFunc calls
	LoadErrors           uint64 // LoadFunc calls that failed (not counting ErrNotFound)
	Coalesced            uint64 // Gets that waited on another Get's load in this process
	LeaseWaits           uint64 // loads that waited on another process's lease
	StaleSetsPrevented   uint64 // fills rejected by a voided lease or a newer version
	CorruptEntries       uint64 // undecodable entries treated as misses
	RedisErrors          uint64 // failed Redis calls
	RedisSkipped         uint64 // Redis calls not made: breaker open
	Oversize             uint64 // values not cached for exceeding MaxValueBytes
	EncodeErrors         uint64 // values not cached because the Codec failed
	InvalidationsQueued  uint64 // invalidations queued for retry
	InvalidationsRetried uint64 // queued invalidations applied
	InvalidationsDropped uint64 // queued invalidations given up
	InvalidationsPending uint64 // invalidations queued now
	BreakerOpened        uint64 // times the breaker opened
	BreakerClosed        uint64 // times the breaker closed again
	Refreshes            uint64 // background refreshes started
	StaleEntriesFound    uint64 // entries Reconcile found differing from the database
	Sampled              uint64 // sampled hits checked against the database
	Inconsistent         uint64 // sampled entries that still differed after SampleDelay
	Migrated             uint64 // misses answered from the previous key format
	BudgetSpent          uint64 // Redis calls not made: the call's RedisTimeout was spent
	LocalHits            uint64 // Gets answered from the in-process tier
	Breaker              BreakerState
	ReadBypass           bool
}

// counters are a Loader's own counts, kept whatever the Recorder.
type counters struct {
	events     [numEvents]atomic.Uint64
	loads      atomic.Uint64
	loadErrors atomic.Uint64
}

func (c *counters) snapshot() Stats {
	e := func(ev Event) uint64 { return c.events[ev].Load() }
	return Stats{
		Hits:                 e(EventHit),
		Misses:               e(EventMiss),
		NegativeHits:         e(EventNegativeHit),
		Stale:                e(EventStale),
		Bypassed:             e(EventBypass),
		Loads:                c.loads.Load(),
		LoadErrors:           c.loadErrors.Load(),
		Coalesced:            e(EventCoalesced),
		LeaseWaits:           e(EventLeaseWait),
		StaleSetsPrevented:   e(EventStaleSetPrevented),
		CorruptEntries:       e(EventCorruptEntry),
		RedisErrors:          e(EventRedisError),
		Oversize:             e(EventOversize),
		EncodeErrors:         e(EventEncodeError),
		InvalidationsQueued:  e(EventInvalidationQueued),
		InvalidationsRetried: e(EventInvalidationRetried),
		InvalidationsDropped: e(EventInvalidationDropped),
		RedisSkipped:         e(EventRedisSkipped),
		BreakerOpened:        e(EventBreakerOpen),
		BreakerClosed:        e(EventBreakerClosed),
		Refreshes:            e(EventRefresh),
		StaleEntriesFound:    e(EventStaleEntryFound),
		Sampled:              e(EventSampled),
		Inconsistent:         e(EventInconsistent),
		Migrated:             e(EventMigrated),
		BudgetSpent:          e(EventBudgetSpent),
		LocalHits:            e(EventLocalHit),
	}
}

// Prometheus is a Recorder that exports a Loader's metrics, labelled with
// the loader's name, to a prometheus.Registerer:
//
//	cache_requests_total{loader,result}     Gets by result: hit, local_hit, miss, negative_hit, stale, bypass
//	cache_events_total{loader,event}        everything else Event names
//	cache_loads_total{loader,result}        LoadFunc calls: ok, not_found, error
//	cache_load_duration_seconds{loader,result}  LoadFunc latency by result: ok, not_found, error
//	cache_redis_duration_seconds{loader,result} Redis call latency (one round trip): ok (answered), error (Redis failed)
//	cache_writes_total{loader,op,result}    Set, Invalidate, WriteThrough calls (op: set, invalidate, write_through) by result: stored, invalidated, queued, error
//	cache_breaker_state{loader}             0 closed, 1 half-open, 2 open
//	cache_read_bypass{loader}               1 while SetReadBypass(true)
//	cache_invalidations_pending{loader}     invalidations queued for retry
//
// and, for Loaders with the in-process tier (Options.Local; see
// LocalStats), read when the metrics are collected:
//
//	cache_local_entries{loader}                    entries held (estimate)
//	cache_local_bytes{loader}                      bytes held, as weighed against LocalOptions.MaxBytes
//	cache_local_fills_total{loader}                values read from Redis that entered the tier
//	cache_local_fills_refused_total{loader}        values refused: an invalidation or a stream break came after their read was sent
//	cache_local_invalidations_total{loader}        keys invalidated (by the stream and by this process's writes)
//	cache_local_invalidation_messages_total{loader} invalidation messages received from Redis
//	cache_local_flushes_total{loader}              stream breaks, each of which emptied the tier
//	cache_local_barriers_total{loader}             barrier PINGs sent
//	cache_local_barrier_waits_total{loader}        strict Gets that waited for a barrier
//	cache_local_barrier_waits_failed_total{loader} of which the barrier did not return in time, or the stream was down
//	cache_local_barrier_duration_seconds{loader}   latency of each returned barrier (observed as it returns)
//	cache_local_up{loader}                         1 while the stream is subscribed and a barrier returned on its connection
//	cache_local_lag_seconds{loader}                how long ago the last returned barrier was sent (0 while down)
//
// The tier's hits are cache_requests_total{result="local_hit"}. Several
// Loaders of one name in a process add up: their counters, entries and
// bytes are summed, up is the lowest and lag the largest. A closed
// Loader's gauges go; its counts stay in the counters.
//
// Several Loaders may share one Prometheus, and NewPrometheus may be called
// more than once on the same registry: the metrics are registered once and
// shared.
type Prometheus struct {
	requests *prometheus.CounterVec
	events   *prometheus.CounterVec
	loads    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	redis    *prometheus.HistogramVec
	writes   *prometheus.CounterVec
	breaker  *prometheus.GaugeVec
	bypass   *prometheus.GaugeVec
	pending  *prometheus.GaugeVec
	// barrier and local are the in-process tier's metrics.
	barrier *prometheus.HistogramVec
	local   *localCollector
	// loaders holds the names seen: each loader's series are created at 0
	// when it first reports, so that rate() and increase() see its first
	// event and the gauges read 0 rather than nothing.
	loaders sync.Map
}

// NewPrometheus registers the cache metrics with reg (never the global
// registry unless you pass it) and returns a Recorder that feeds them.
func NewPrometheus(reg prometheus.Registerer) (*Prometheus, error) {
	if reg == nil {
		return nil, errors.New("cache: NewPrometheus needs a Registerer")
	}
	p := &Prometheus{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_requests_total",
			Help: "Gets by result: hit, local_hit, miss, negative_hit, stale, bypass.",
		}, []string{"loader", "result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_events_total",
			Help: "Things the cache did or prevented: coalesced, lease_wait, stale_set_prevented, corrupt_entry, redis_error, oversize, ...",
		}, []string{"loader", "event"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_loads_total",
			Help: "LoadFunc calls by result: ok, not_found, error.",
		}, []string{"loader", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cache_load_duration_seconds",
			Help:    "LoadFunc latency by result: ok, not_found, error.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"loader", "result"}),
		redis: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cache_redis_duration_seconds",
			Help:    "Latency of the cache's Redis calls (one round trip: a command, script or pipeline) by result: ok (Redis answered), error (Redis failed).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"loader", "result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_writes_total",
			Help: "Set, Invalidate and WriteThrough calls (op: set, invalidate, write_through) by result: stored, invalidated, queued, error.",
		}, []string{"loader", "op", "result"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_breaker_state",
			Help: "Circuit breaker around Redis: 0 closed, 1 half-open, 2 open.",
		}, []string{"loader"}),
		bypass: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_read_bypass",
			Help: "1 while Redis reads are bypassed (incident mode).",
		}, []string{"loader"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cache_invalidations_pending",
			Help: "Invalidations queued for retry because Redis could not be reached; other processes may serve those keys stale until they land.",
		}, []string{"loader"}),
		barrier: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cache_local_barrier_duration_seconds",
			Help:    "In-process tier: latency of each barrier that returned, from its PING on the invalidation stream to its return (every invalidation queued before it applied).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"loader"}),
		local: newLocalCollector(),
	}
	var err error
	if p.requests, err = promreg.Register(reg, p.requests); err != nil {
		return nil, err
	}
	if p.events, err = promreg.Register(reg, p.events); err != nil {
		return nil, err
	}
	if p.loads, err = promreg.Register(reg, p.loads); err != nil {
		return nil, err
	}
	if p.duration, err = promreg.Register(reg, p.duration); err != nil {
		return nil, err
	}
	if p.redis, err = promreg.Register(reg, p.redis); err != nil {
		return nil, err
	}
	if p.writes, err = promreg.Register(reg, p.writes); err != nil {
		return nil, err
	}
	if p.breaker, err = promreg.Register(reg, p.breaker); err != nil {
		return nil, err
	}
	if p.bypass, err = promreg.Register(reg, p.bypass); err != nil {
		return nil, err
	}
	if p.pending, err = promreg.Register(reg, p.pending); err != nil {
		return nil, err
	}
	if p.barrier, err = promreg.Register(reg, p.barrier); err != nil {
		return nil, err
	}
	if p.local, err = promreg.Register(reg, p.local); err != nil {
		return nil, err
	}
	return p, nil
}

// seen creates loader's series at 0 the first time it reports.
func (p *Prometheus) seen(loader string) {
	if _, ok := p.loaders.Load(loader); ok {
		return
	}
	if _, loaded := p.loaders.LoadOrStore(loader, true); loaded {
		return
	}
	for e := range numEvents {
		if e.isRequest() {
			p.requests.WithLabelValues(loader, e.String())
		} else {
			p.events.WithLabelValues(loader, e.String())
		}
	}
	for _, r := range loadResults {
		p.loads.WithLabelValues(loader, r)
		p.duration.WithLabelValues(loader, r)
	}
	for _, r := range []string{"ok", "error"} {
		p.redis.WithLabelValues(loader, r)
	}
	for _, op := range writeOps {
		for r := range numWriteResults {
			if r.of(op) {
				p.writes.WithLabelValues(loader, writeOpLabel(op), r.String())
			}
		}
	}
	p.breaker.WithLabelValues(loader)
	p.bypass.WithLabelValues(loader)
	p.pending.WithLabelValues(loader)
}

// Count implements Recorder.
func (p *Prometheus) Count(loader string, e Event) {
	p.seen(loader)
	if e.isRequest() {
		p.requests.WithLabelValues(loader, e.String()).Inc()
		return
	}
	p.events.WithLabelValues(loader, e.String()).Inc()
	switch e {
	case EventBreakerOpen:
		p.breaker.WithLabelValues(loader).Set(float64(BreakerOpen))
	case EventBreakerHalfOpen:
		p.breaker.WithLabelValues(loader).Set(float64(BreakerHalfOpen))
	case EventBreakerClosed:
		p.breaker.WithLabelValues(loader).Set(float64(BreakerClosed))
	case EventReadBypassOn:
		p.bypass.WithLabelValues(loader).Set(1)
	case EventReadBypassOff:
		p.bypass.WithLabelValues(loader).Set(0)
	}
}

// InvalidationsPending implements PendingRecorder.
func (p *Prometheus) InvalidationsPending(loader string, n int) {
	p.seen(loader)
	p.pending.WithLabelValues(loader).Set(float64(n))
}

// ObserveLoad implements Recorder.
func (p *Prometheus) ObserveLoad(loader string, d time.Duration, err error) {
	p.seen(loader)
	result := loadResult(err)
	p.loads.WithLabelValues(loader, result).Inc()
	p.duration.WithLabelValues(loader, result).Observe(d.Seconds())
}

// ObserveRedis implements RedisRecorder.
func (p *Prometheus) ObserveRedis(loader string, d time.Duration, err error) {
	p.seen(loader)
	result := "ok"
	if err != nil {
		result = "error"
	}
	p.redis.WithLabelValues(loader, result).Observe(d.Seconds())
}

// CountWrite implements WriteRecorder.
func (p *Prometheus) CountWrite(loader string, op Op, r WriteResult) {
	p.seen(loader)
	p.writes.WithLabelValues(loader, writeOpLabel(op), r.String()).Inc()
}

// AttachLocal implements LocalRecorder: loader's cache_local_* metrics
// read stats when collected, until detach.
func (p *Prometheus) AttachLocal(loader string, stats func() LocalStats) (detach func()) {
	p.seen(loader)
	p.barrier.WithLabelValues(loader)
	return p.local.attach(loader, stats)
}

// ObserveBarrier implements LocalRecorder.
func (p *Prometheus) ObserveBarrier(loader string, d time.Duration) {
	p.barrier.WithLabelValues(loader).Observe(d.Seconds())
}

// loadResults are the results of a load: see loadResult.
var loadResults = []string{"ok", "not_found", "error"}

// loadResult is the metric label of a load's outcome.
func loadResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	}
	return "error"
}

// writeOps are the operations WriteRecorder counts.
var writeOps = []Op{OpSet, OpInvalidate, OpWriteThrough}

// writeOpLabel is the metric label of a write operation.
func writeOpLabel(op Op) string {
	switch op {
	case OpSet:
		return "set"
	case OpInvalidate:
		return "invalidate"
	case OpWriteThrough:
		return "write_through"
	}
	return "unknown"
}

// of reports whether op can end with r.
func (r WriteResult) of(op Op) bool {
	switch op {
	case OpInvalidate:
		return r == WriteInvalidated || r == WriteQueued
	case OpSet:
		return r != WriteQueued
	}
	return true
}
