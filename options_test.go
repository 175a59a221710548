package cache

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func nopLoad(context.Context, string) (string, error) { return "", nil }

func TestNewValidates(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, tc := range []struct {
		name string
		opts *Options
		want string
	}{
		{"negative TTL", &Options{TTL: -time.Second}, "Options.TTL is negative"},
		{"negative NegativeTTL", &Options{NegativeTTL: -1}, "Options.NegativeTTL is negative"},
		{"negative RedisTimeout", &Options{RedisTimeout: -1}, "Options.RedisTimeout is negative"},
		{"negative LoadTimeout", &Options{LoadTimeout: -1}, "Options.LoadTimeout is negative"},
		{"negative LeaseTimeout", &Options{LeaseTimeout: -1}, "Options.LeaseTimeout is negative"},
		{"jitter too large", &Options{Jitter: 1}, "Options.Jitter must be in [0, 1)"},
		{"negative jitter", &Options{Jitter: -0.1}, "Options.Jitter must be in [0, 1)"},
		{"negative MaxValueBytes", &Options{MaxValueBytes: -1}, "Options.MaxValueBytes is negative"},
		{"sub-millisecond TTL", &Options{TTL: time.Microsecond}, "at least 1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(rdb, "x", nopLoad, tc.opts)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "cache: ")
		})
	}
	t.Run("nil client", func(t *testing.T) {
		_, err := New(nil, "x", nopLoad, nil)
		require.ErrorContains(t, err, "cache: nil Redis client")
	})
	t.Run("empty name", func(t *testing.T) {
		_, err := New(rdb, "", nopLoad, nil)
		require.ErrorContains(t, err, "cache: empty loader name")
	})
	t.Run("nil load", func(t *testing.T) {
		_, err := New[string](rdb, "x", nil, nil)
		require.ErrorContains(t, err, "cache: nil LoadFunc")
	})
	t.Run("Must panics", func(t *testing.T) {
		require.Panics(t, func() { Must(New[string](rdb, "x", nil, nil)) })
	})
}

func TestDefaults(t *testing.T) {
	_, rdb := fakeRedis(t)
	opts := &Options{}
	l, err := New(rdb, "x", nopLoad, opts)
	require.NoError(t, err)
	defer l.Close()
	require.Equal(t, &Options{}, opts, "New must not modify the caller's Options")
	s := l.s
	require.Equal(t, 5*time.Minute, s.ttl)
	require.Equal(t, 0.1, s.jitter)
	require.Equal(t, 30*time.Second, s.negativeTTL)
	require.Equal(t, 50*time.Millisecond, s.redisTimeout)
	require.Equal(t, 5*time.Second, s.loadTimeout)
	require.Equal(t, 5*time.Second, s.leaseTimeout)
	require.Equal(t, 10*time.Second, s.tombstoneTTL)
	require.Equal(t, 1<<20, s.maxValueBytes)
	require.IsType(t, JSON{}, s.codec)

	l2, err := New(rdb, "y", nopLoad, &Options{DisableJitter: true, Jitter: 0.5, LoadTimeout: time.Second})
	require.NoError(t, err)
	defer l2.Close()
	require.Zero(t, l2.s.jitter)
	require.Equal(t, time.Second, l2.s.leaseTimeout, "LeaseTimeout defaults to LoadTimeout")
}

func TestKeyLayout(t *testing.T) {
	_, rdb := fakeRedis(t)
	l, err := New(rdb, "sim", nopLoad, &Options{Prefix: "app:"})
	require.NoError(t, err)
	defer l.Close()
	require.Equal(t, "app:sim#2:{t1}:8901:status", l.Key("{t1}:8901:status"))
	require.Equal(t, "sim", l.Name())
}

// The first '#' of a key ends its namespace: loaders whose names or
// prefixes would run into each other ("user" and "user:profile") never
// share a key.
func TestKeyNamespacesNeverOverlap(t *testing.T) {
	_, rdb := fakeRedis(t)
	user, err := New(rdb, "user", nopLoad, &Options{Prefix: "app:"})
	require.NoError(t, err)
	defer user.Close()
	profile, err := New(rdb, "user:profile", nopLoad, &Options{Prefix: "app:"})
	require.NoError(t, err)
	defer profile.Close()
	nested, err := New(rdb, "profile", nopLoad, &Options{Prefix: "app:user:"})
	require.NoError(t, err)
	defer nested.Close()
	require.NotEqual(t, user.Key("profile:1"), profile.Key("1"))
	require.NotEqual(t, user.Key("profile:1"), nested.Key("1"))
	require.False(t, strings.HasPrefix(profile.Key("1"), user.Key("")), "user's SCAN pattern does not match user:profile's keys")

	for _, o := range []struct {
		name   string
		prefix string
	}{{"us#er", ""}, {"user", "app#"}} {
		_, err := New(rdb, o.name, nopLoad, &Options{Prefix: o.prefix})
		require.ErrorContains(t, err, "'#'")
	}
}

func TestJitter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		d      time.Duration
		frac   float64
		lo, hi time.Duration
	}{
		{"none", time.Second, 0, time.Second, time.Second},
		{"10%", time.Second, 0.1, 900 * time.Millisecond, 1100 * time.Millisecond},
		{"short TTL keeps 1ms floor", time.Millisecond, 0.9, time.Millisecond, 1900 * time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 1000 {
				d := jittered(tc.d, tc.frac)
				require.GreaterOrEqual(t, d, tc.lo)
				require.LessOrEqual(t, d, tc.hi)
				seen[d] = true
			}
			if tc.frac > 0 && tc.d > time.Millisecond {
				require.Greater(t, len(seen), 100, "jitter must spread expiries")
			}
		})
	}
	require.EqualValues(t, 1, ms(time.Microsecond), "a positive duration never becomes 0 ms")
	require.EqualValues(t, 1500, ms(1500*time.Millisecond))
}

func TestNewValidatesResilienceOptions(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"negative BreakerFailures", Options{BreakerFailures: -1}, "Options.BreakerFailures must be in [0, 2^32)"},
		{"negative BreakerCooldown", Options{BreakerCooldown: -time.Second}, "Options.BreakerCooldown is negative"},
		{"negative EarlyRefreshBeta", Options{EarlyRefreshBeta: -0.5}, "Options.EarlyRefreshBeta must be a finite number >= 0"},
		{"negative MaxStale", Options{MaxStale: -time.Second}, "Options.MaxStale is negative"},
		{"negative MaxStale with StaleIfError", Options{StaleIfError: true, MaxStale: -1}, "Options.MaxStale is negative"},
		{"StaleWhileRevalidate without MaxStale", Options{StaleWhileRevalidate: true}, "need Options.MaxStale > 0"},
		{"StaleIfError without MaxStale", Options{StaleIfError: true}, "need Options.MaxStale > 0"},
		{"both without MaxStale", Options{StaleWhileRevalidate: true, StaleIfError: true}, "need Options.MaxStale > 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			l, err := New(rdb, "x", nopLoad, &opts)
			require.Nil(t, l)
			require.ErrorContains(t, err, "cache: ")
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, tc.opts, opts, "New must not modify the caller's Options")
		})
	}
}

func TestDefaultsOfResilienceOptions(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, tc := range []struct {
		name      string
		opts      *Options
		fails     int
		cooldown  time.Duration
		beta      float64
		breaker   bool // a breaker exists
		noEarly   bool
		swr, sie  bool
		maxStale  time.Duration
		tombstone time.Duration
	}{
		{name: "nil", opts: nil, fails: 5, cooldown: defaultBreakerCool, beta: 1, breaker: true, tombstone: 10 * time.Second},
		{name: "zero", opts: &Options{}, fails: 5, cooldown: defaultBreakerCool, beta: 1, breaker: true, tombstone: 10 * time.Second},
		{name: "explicit", opts: &Options{BreakerFailures: 2, BreakerCooldown: 3 * time.Second, EarlyRefreshBeta: 0.5},
			fails: 2, cooldown: 3 * time.Second, beta: 0.5, breaker: true, tombstone: 10 * time.Second},
		{name: "DisableBreaker", opts: &Options{DisableBreaker: true}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			tombstone: 10 * time.Second},
		{name: "DisableEarlyRefresh", opts: &Options{DisableEarlyRefresh: true}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			breaker: true, noEarly: true, tombstone: 10 * time.Second},
		{name: "MaxStale alone is ignored", opts: &Options{MaxStale: time.Hour}, fails: 5, cooldown: defaultBreakerCool, beta: 1,
			breaker: true, tombstone: 10 * time.Second},
		{name: "StaleWhileRevalidate", opts: &Options{StaleWhileRevalidate: true, MaxStale: time.Minute}, fails: 5,
			cooldown: defaultBreakerCool, beta: 1, breaker: true, swr: true, maxStale: time.Minute, tombstone: time.Minute},
		{name: "StaleIfError, short MaxStale", opts: &Options{StaleIfError: true, MaxStale: time.Second}, fails: 5,
			cooldown: defaultBreakerCool, beta: 1, breaker: true, sie: true, maxStale: time.Second, tombstone: 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before Options
			if tc.opts != nil {
				before = *tc.opts
			}
			l, err := New(rdb, "x", nopLoad, tc.opts)
			require.NoError(t, err)
			defer l.Close()
			if tc.opts != nil {
				require.Equal(t, before, *tc.opts, "New must not modify the caller's Options")
			}
			s := l.s
			require.Equal(t, tc.fails, s.breakerFails)
			require.Equal(t, tc.cooldown, s.breakerCool)
			require.Equal(t, tc.beta, s.beta)
			require.Equal(t, !tc.breaker, s.noBreaker)
			require.Equal(t, tc.breaker, l.breaker != nil)
			require.Equal(t, tc.noEarly, s.noEarly)
			require.Equal(t, tc.swr, s.swr)
			require.Equal(t, tc.sie, s.staleIfError)
			require.Equal(t, tc.maxStale, s.maxStale)
			require.Equal(t, tc.tombstone, s.tombstoneTTL, "a tombstone lives as long as its payload may be served")
			require.Equal(t, BreakerClosed, l.BreakerState())
			st := l.Stats()
			require.Equal(t, BreakerClosed, st.Breaker)
			require.False(t, st.ReadBypass)
		})
	}
}

func TestNewRequiresContextTimeout(t *testing.T) {
	mr, _ := fakeRedis(t)
	unreachable := "127.0.0.1:1" // never dialled: New does not call Redis
	for _, tc := range []struct {
		name   string
		client func(on bool) redis.UniversalClient
	}{
		{"Client", func(on bool) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: on})
		}},
		{"ClusterClient", func(on bool) redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{unreachable}, ContextTimeoutEnabled: on})
		}},
		{"Ring", func(on bool) redis.UniversalClient {
			return redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"shard": mr.Addr()}, ContextTimeoutEnabled: on})
		}},
		{"FailoverClient", func(on bool) redis.UniversalClient {
			return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "main", SentinelAddrs: []string{unreachable},
				ContextTimeoutEnabled: on})
		}},
		{"FailoverClusterClient", func(on bool) redis.UniversalClient {
			return redis.NewFailoverClusterClient(&redis.FailoverOptions{MasterName: "main", SentinelAddrs: []string{unreachable},
				ContextTimeoutEnabled: on})
		}},
		{"UniversalClient", func(on bool) redis.UniversalClient {
			return redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}, ContextTimeoutEnabled: on})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			off := tc.client(false)
			defer off.Close()
			l, err := New(off, "x", nopLoad, nil)
			require.Nil(t, l)
			require.ErrorContains(t, err, "cache: ")
			require.ErrorContains(t, err, "ContextTimeoutEnabled")

			on := tc.client(true)
			defer on.Close()
			l, err = New(on, "x", nopLoad, nil)
			require.NoError(t, err)
			require.NoError(t, l.Close())
		})
	}
}

// New rejects settings that are not numbers or that overflow, rather than
// take a NaN EarlyRefreshBeta as early refresh off, +Inf as a refresh on
// every hit, a NaN Jitter as none, or truncate BreakerFailures to uint32
// (1<<32 would open the breaker on the first failure).
func TestNewRejectsNonFiniteOptions(t *testing.T) {
	_, rdb := fakeRedis(t)
	shift := uint(32)
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"NaN EarlyRefreshBeta", Options{EarlyRefreshBeta: math.NaN()}},
		{"+Inf EarlyRefreshBeta", Options{EarlyRefreshBeta: math.Inf(1)}},
		{"NaN Jitter", Options{Jitter: math.NaN()}},
		{"BreakerFailures beyond uint32", Options{BreakerFailures: 1 << shift}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(rdb, "x", nopLoad, &tc.opts)
			if l != nil {
				l.Close()
			}
			require.ErrorContains(t, err, "cache: ")
		})
	}
}
