package cache

import (
	"context"
	"strings"
	"testing"
	"time"

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
