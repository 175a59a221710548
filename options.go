package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Options configure a Loader. The zero value of every field selects its
// default; a nil *Options means all defaults. New copies what it needs and
// never modifies the Options it is given.
type Options struct {
	// Prefix is put before the Loader's name in every Redis key:
	// Prefix + name + "#2:" + key, where "2" is the entry format. Neither
	// Prefix nor the name may contain '#', so the first '#' of a key ends
	// its namespace and no two Loaders (loader "user" and loader
	// "user:profile", say) ever share a key or a SCAN pattern.
	// default: "" (no prefix)
	Prefix string

	// TTL is how long a loaded or written value lives in Redis, before jitter.
	// Any positive duration works, including a second or less: tombstones and
	// leases have lifetimes of their own.
	// default: 5m
	TTL time.Duration

	// Jitter spreads expiries over TTL × (1 ± Jitter) so that keys filled
	// together do not expire together. It must be in [0, 1).
	// default: 0.1; set DisableJitter for exact TTLs.
	Jitter float64

	// DisableJitter stores every entry with exactly TTL or NegativeTTL.
	// default: false
	DisableJitter bool

	// NegativeTTL is how long a "not found" answer is cached, before jitter.
	// default: 30s
	NegativeTTL time.Duration

	// DisableNegativeCache stops caching "not found": every Get of a missing
	// row then reaches the LoadFunc (still one load per key at a time).
	// default: false
	DisableNegativeCache bool

	// RedisTimeout is the budget of one Get's wait on Redis: its read, lease
	// and (when the caller waits for it) fill together, so a Get finishes
	// within RedisTimeout plus the load time however Redis misbehaves. Each
	// Set, Invalidate and lease poll gets it as a bound of its own.
	// It needs a client that honours context deadlines: New refuses a
	// go-redis client built without ContextTimeoutEnabled.
	// default: 50ms
	RedisTimeout time.Duration

	// InvalidateTimeout bounds an Invalidate or InvalidateVersions call:
	// an invalidation is a write's last step, so it is retried (with
	// backoff, each attempt bounded by what is left) rather than failed
	// fast like a read. What still fails when it runs out — or at once
	// while the circuit breaker is open — is queued and applied in the
	// background as soon as Redis answers, this process's Gets of those
	// keys bypass Redis meanwhile, and the error wraps ErrQueued.
	// default: 1s
	InvalidateTimeout time.Duration

	// BreakerFailures is how many Redis calls in a row must fail (time out,
	// lose their connection) before the circuit breaker opens. While it is
	// open, Get answers from the LoadFunc without touching Redis, Set and
	// Invalidate fail at once with ErrRedisUnavailable, and WriteThrough
	// queues its invalidation.
	// default: 5
	BreakerFailures int

	// BreakerCooldown is how long the breaker stays open before a probe may
	// close it. The probe is the Loader's own PING, sent in the background
	// (no Get waits on it): Redis is PINGed every 25ms while the breaker is
	// open, and the first PING that succeeds after the cooldown closes it,
	// so hits resume at most about BreakerCooldown + 25ms after Redis
	// answers again.
	// default: 150ms
	BreakerCooldown time.Duration

	// DisableBreaker keeps calling Redis however often it fails (each call
	// still bounded by RedisTimeout).
	// default: false
	DisableBreaker bool

	// Breaker is a circuit breaker shared with the other Loaders of the
	// same Redis client (see NewBreaker), used instead of a breaker of the
	// Loader's own: a failure of any member's call counts towards opening
	// it, and it opens and closes for all of them at once, with one prober.
	// The Loader must use the client the Breaker was made with. The
	// Breaker's BreakerOptions configure it: New refuses Options that also
	// set BreakerFailures, BreakerCooldown or DisableBreaker.
	// default: nil (a breaker of the Loader's own)
	Breaker *Breaker

	// EarlyRefreshBeta scales early refresh (XFetch): a hit with r left
	// before expiry starts one background refresh with probability
	// exp(-r / (EarlyRefreshBeta × last load duration)). Larger values
	// refresh earlier.
	// default: 1
	EarlyRefreshBeta float64

	// DisableEarlyRefresh turns early refresh off: hot keys then expire and
	// are loaded again on the next Get (still one load at a time).
	// default: false
	DisableEarlyRefresh bool

	// MaxStale is how long past its TTL, or past its invalidation, a value
	// is kept in Redis for StaleWhileRevalidate and StaleIfError. Required
	// (> 0) by either; ignored otherwise.
	// default: 0 (values are dropped when they expire or are invalidated)
	MaxStale time.Duration

	// StaleWhileRevalidate serves an expired or invalidated value (at most
	// MaxStale old, counted as stale) while one background refresh loads
	// the new one.
	// WARNING: this gives up the no-stale-read promise for such values: a
	// Get after Invalidate may return the value invalidated.
	// default: false
	StaleWhileRevalidate bool

	// StaleIfError answers a Get whose load failed (the database is down)
	// with the last value, if it is at most MaxStale past its TTL or
	// invalidation, instead of the error; counted as stale.
	// default: false
	StaleIfError bool

	// LoadTimeout bounds one shared load. The load runs detached from the
	// caller's cancellation (other callers may be waiting on it) but never
	// longer than this.
	// default: 5s
	LoadTimeout time.Duration

	// LeaseTimeout is how long a fill lease lives in Redis. While it lives,
	// other processes wait for its holder's fill instead of loading; if the
	// holder dies, the lease lapses and another process loads.
	// default: LoadTimeout
	LeaseTimeout time.Duration

	// MaxValueBytes is the largest encoded value stored in Redis. Larger
	// values are returned to the caller but not cached, and counted.
	// default: 1 MiB
	MaxValueBytes int

	// Codec encodes values for Redis.
	// default: JSON (encoding/json)
	Codec Codec

	// Recorder receives every counted event and load duration.
	// default: none (Stats still counts)
	Recorder Recorder

	// Tracer follows each Get, GetMany, Set, Invalidate, WriteThrough, load,
	// background refresh and sampled check in its context, for distributed
	// tracing (package otelcache: OpenTelemetry).
	// default: none (no tracing, no cost)
	Tracer Tracer

	// PreviousKeyPrefix names the key format this Loader replaces: entries
	// were at PreviousKeyPrefix + key (e.g. "v1:sim:" when the new format is
	// "v2:sim#2:"; or "sim:" to upgrade from the library's releases before
	// entry format 2, whose entries were hashes at Prefix + name + ":" +
	// key — both formats are read). A miss in the new format whose entry there is absent (not
	// a tombstone) first reads the previous entry: a fresh value is
	// converted with Migrate, stored in the new format with the previous
	// entry's remaining TTL, and counted as migrated — so a rollout that
	// changes the key format keeps its hit rate. Invalidate, Set and
	// WriteThrough also delete the previous entry, for the processes
	// still on it.
	// default: "" (no previous format)
	PreviousKeyPrefix string

	// Migrate converts an encoded value of the previous format into this
	// Loader's encoding; an error means "load it from the database".
	// default: nil (the encoding did not change)
	Migrate func(old []byte) ([]byte, error)

	// SampleRate is the fraction of hits, in [0, 1], checked against the
	// database SampleDelay later: an entry that still differs then (not a
	// write in flight) counts as inconsistent. The inconsistency ratio is
	// inconsistent / sampled in the metrics. Each check costs two entry reads and
	// one load.
	// default: 0 (no sampling)
	SampleRate float64

	// SampleDelay is how long after a sampled hit the check runs.
	// default: 1m
	SampleDelay time.Duration

	// Logger receives operational messages (breaker transitions, dropped
	// invalidations, corrupt entries, panics in user functions); never
	// payloads. What an operator must see — a dropped invalidation leaves
	// other processes stale until the TTL — is logged at Warn or Error.
	// default: slog.Default()
	Logger *slog.Logger

	// Local turns on the in-process tier in front of Redis (see
	// LocalOptions); it needs a *redis.Client or a *redis.ClusterClient.
	// default: nil (no tier: Get reads Redis every time)
	Local *LocalOptions
}

// settings is the validated, private copy of Options a Loader runs with.
type settings struct {
	prefix        string
	ttl           time.Duration
	jitter        float64
	negativeTTL   time.Duration
	noNegative    bool
	redisTimeout  time.Duration
	invalTimeout  time.Duration
	breakerFails  int
	breakerCool   time.Duration
	noBreaker     bool
	breaker       *Breaker // Options.Breaker: shared; nil: the Loader's own
	beta          float64
	noEarly       bool
	maxStale      time.Duration
	swr           bool
	staleIfError  bool
	prevPrefix    string
	migrate       func([]byte) ([]byte, error)
	sampleRate    float64
	sampleDelay   time.Duration
	loadTimeout   time.Duration
	leaseTimeout  time.Duration
	tombstoneTTL  time.Duration
	maxValueBytes int
	codec         Codec
	recorder      Recorder
	redisRecorder RedisRecorder // recorder, if it is one; else nil
	writeRecorder WriteRecorder // recorder, if it is one; else nil
	tracer        Tracer
	logger        *slog.Logger
	local         *localSettings // nil: no in-process tier
}

const (
	defaultTTL           = 5 * time.Minute
	defaultJitter        = 0.1
	defaultNegativeTTL   = 30 * time.Second
	defaultRedisTimeout  = 50 * time.Millisecond
	defaultInvalTimeout  = time.Second
	defaultLoadTimeout   = 5 * time.Second
	defaultMaxValueBytes = 1 << 20
	defaultBreakerFails  = 5
	defaultBreakerCool   = 150 * time.Millisecond
	defaultBeta          = 1.0
)

func (o *Options) settings() (settings, error) {
	if o == nil {
		o = &Options{}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TTL", o.TTL}, {"NegativeTTL", o.NegativeTTL}, {"RedisTimeout", o.RedisTimeout}, {"InvalidateTimeout", o.InvalidateTimeout},
		{"LoadTimeout", o.LoadTimeout}, {"LeaseTimeout", o.LeaseTimeout},
		{"BreakerCooldown", o.BreakerCooldown}, {"MaxStale", o.MaxStale}, {"SampleDelay", o.SampleDelay},
	} {
		if d.v < 0 {
			return settings{}, fmt.Errorf("cache: Options.%s is negative (%v)", d.name, d.v)
		}
	}
	if !(o.Jitter >= 0 && o.Jitter < 1) { // NaN fails too
		return settings{}, fmt.Errorf("cache: Options.Jitter must be in [0, 1), got %v", o.Jitter)
	}
	if o.BreakerFailures < 0 || int64(o.BreakerFailures) > math.MaxUint32 {
		return settings{}, fmt.Errorf("cache: Options.BreakerFailures must be in [0, 2^32), got %d", o.BreakerFailures)
	}
	if o.Breaker != nil {
		switch {
		case o.DisableBreaker:
			return settings{}, errors.New("cache: Options.Breaker and Options.DisableBreaker are both set: " +
				"a Loader either shares a breaker or has none")
		case o.BreakerFailures != 0 || o.BreakerCooldown != 0:
			return settings{}, errors.New("cache: Options.Breaker is set together with Options.BreakerFailures or " +
				"BreakerCooldown: a shared Breaker is configured by the BreakerOptions given to NewBreaker")
		}
	}
	if !(o.EarlyRefreshBeta >= 0) || math.IsInf(o.EarlyRefreshBeta, 1) { // NaN fails too
		return settings{}, fmt.Errorf("cache: Options.EarlyRefreshBeta must be a finite number >= 0, got %v", o.EarlyRefreshBeta)
	}
	if (o.StaleWhileRevalidate || o.StaleIfError) && o.MaxStale <= 0 {
		return settings{}, errors.New("cache: StaleWhileRevalidate and StaleIfError need Options.MaxStale > 0 (how stale a value may be served)")
	}
	if !(o.SampleRate >= 0 && o.SampleRate <= 1) {
		return settings{}, fmt.Errorf("cache: Options.SampleRate must be in [0, 1], got %v", o.SampleRate)
	}
	if o.MaxValueBytes < 0 {
		return settings{}, fmt.Errorf("cache: Options.MaxValueBytes is negative (%d)", o.MaxValueBytes)
	}
	s := settings{
		prefix:        o.Prefix,
		ttl:           or(o.TTL, defaultTTL),
		jitter:        or(o.Jitter, defaultJitter),
		negativeTTL:   or(o.NegativeTTL, defaultNegativeTTL),
		noNegative:    o.DisableNegativeCache,
		redisTimeout:  or(o.RedisTimeout, defaultRedisTimeout),
		invalTimeout:  or(o.InvalidateTimeout, defaultInvalTimeout),
		breakerFails:  or(o.BreakerFailures, defaultBreakerFails),
		breakerCool:   or(o.BreakerCooldown, defaultBreakerCool),
		noBreaker:     o.DisableBreaker,
		breaker:       o.Breaker,
		beta:          or(o.EarlyRefreshBeta, defaultBeta),
		noEarly:       o.DisableEarlyRefresh,
		swr:           o.StaleWhileRevalidate,
		staleIfError:  o.StaleIfError,
		prevPrefix:    o.PreviousKeyPrefix,
		migrate:       o.Migrate,
		sampleRate:    o.SampleRate,
		sampleDelay:   or(o.SampleDelay, time.Minute),
		loadTimeout:   or(o.LoadTimeout, defaultLoadTimeout),
		maxValueBytes: or(o.MaxValueBytes, defaultMaxValueBytes),
		codec:         o.Codec,
		recorder:      o.Recorder,
		tracer:        o.Tracer,
		logger:        o.Logger,
	}
	if o.DisableJitter {
		s.jitter = 0
	}
	if s.swr || s.staleIfError {
		s.maxStale = o.MaxStale
	}
	s.leaseTimeout = or(o.LeaseTimeout, s.loadTimeout)
	// A tombstone outlives any fill that could have started before it: such a
	// fill holds a lease granted at most LeaseTimeout ago and loads for at
	// most LoadTimeout.
	// A tombstone that keeps a stale payload lives as long as it may be served.
	s.tombstoneTTL = max(s.leaseTimeout+s.loadTimeout, s.maxStale)
	if s.ttl < time.Millisecond || s.negativeTTL < time.Millisecond || s.leaseTimeout < time.Millisecond {
		return settings{}, errors.New("cache: TTL, NegativeTTL and LeaseTimeout must be at least 1ms (Redis expiry resolution)")
	}
	local, err := o.Local.settings(s.ttl)
	if err != nil {
		return settings{}, err
	}
	s.local = local
	if s.codec == nil {
		s.codec = JSON{}
	}
	if s.recorder == nil {
		s.recorder = nopRecorder{}
	}
	s.redisRecorder, _ = s.recorder.(RedisRecorder)
	s.writeRecorder, _ = s.recorder.(WriteRecorder)
	if s.logger == nil {
		s.logger = slog.Default()
	}
	return s, nil
}

func or[V comparable](v, def V) V {
	var zero V
	if v == zero {
		return def
	}
	return v
}
