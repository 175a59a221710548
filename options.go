package cache

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Options configure a Loader. The zero value of every field selects its
// default; a nil *Options means all defaults. New copies what it needs and
// never modifies the Options it is given.
type Options struct {
	// Prefix is put before the Loader's name in every Redis key:
	// Prefix + name + ":" + key.
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

	// RedisTimeout bounds each Redis call a Get, Set or Invalidate makes.
	// WARNING: go-redis honours context deadlines only when the client was
	// built with ContextTimeoutEnabled: true; otherwise its own ReadTimeout
	// and WriteTimeout apply.
	// default: 50ms
	RedisTimeout time.Duration

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

	// Logger receives operational messages (dropped invalidations, corrupt
	// entries); never payloads.
	// default: discards everything
	Logger *slog.Logger
}

// settings is the validated, private copy of Options a Loader runs with.
type settings struct {
	prefix        string
	ttl           time.Duration
	jitter        float64
	negativeTTL   time.Duration
	noNegative    bool
	redisTimeout  time.Duration
	loadTimeout   time.Duration
	leaseTimeout  time.Duration
	tombstoneTTL  time.Duration
	maxValueBytes int
	codec         Codec
	recorder      Recorder
	logger        *slog.Logger
}

const (
	defaultTTL           = 5 * time.Minute
	defaultJitter        = 0.1
	defaultNegativeTTL   = 30 * time.Second
	defaultRedisTimeout  = 50 * time.Millisecond
	defaultLoadTimeout   = 5 * time.Second
	defaultMaxValueBytes = 1 << 20
)

func (o *Options) settings() (settings, error) {
	if o == nil {
		o = &Options{}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TTL", o.TTL}, {"NegativeTTL", o.NegativeTTL}, {"RedisTimeout", o.RedisTimeout},
		{"LoadTimeout", o.LoadTimeout}, {"LeaseTimeout", o.LeaseTimeout},
	} {
		if d.v < 0 {
			return settings{}, fmt.Errorf("cache: Options.%s is negative (%v)", d.name, d.v)
		}
	}
	if o.Jitter < 0 || o.Jitter >= 1 {
		return settings{}, fmt.Errorf("cache: Options.Jitter must be in [0, 1), got %v", o.Jitter)
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
		loadTimeout:   or(o.LoadTimeout, defaultLoadTimeout),
		maxValueBytes: or(o.MaxValueBytes, defaultMaxValueBytes),
		codec:         o.Codec,
		recorder:      o.Recorder,
		logger:        o.Logger,
	}
	if o.DisableJitter {
		s.jitter = 0
	}
	s.leaseTimeout = or(o.LeaseTimeout, s.loadTimeout)
	// A tombstone outlives any fill that could have started before it: such a
	// fill holds a lease granted at most LeaseTimeout ago and loads for at
	// most LoadTimeout.
	s.tombstoneTTL = s.leaseTimeout + s.loadTimeout
	if s.ttl < time.Millisecond || s.negativeTTL < time.Millisecond || s.leaseTimeout < time.Millisecond {
		return settings{}, errors.New("cache: TTL, NegativeTTL and LeaseTimeout must be at least 1ms (Redis expiry resolution)")
	}
	if s.codec == nil {
		s.codec = JSON{}
	}
	if s.recorder == nil {
		s.recorder = nopRecorder{}
	}
	if s.logger == nil {
		s.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
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
