package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRun runs the whole demo on miniredis; run fails if the cache breaks
// one of the promises the demo shows.
func TestRun(t *testing.T) {
	var out strings.Builder
	err := run(t.Context(), &out, defaultConfig())
	t.Log("\n" + out.String())
	require.NoError(t, err)
	for _, phase := range []string{"1. stampede", "2. warm reads", "3. stale-set race", "4. write-through", "5. Redis outage"} {
		require.Contains(t, out.String(), phase)
	}
}

// TestPhases checks each phase's numbers on its own demo.
func TestPhases(t *testing.T) {
	newTestDemo := func(t *testing.T) *demo {
		d, err := newDemo(t.Context(), defaultConfig())
		require.NoError(t, err)
		t.Cleanup(d.close)
		return d
	}

	t.Run("stampede", func(t *testing.T) {
		r, err := newTestDemo(t).stampede(t.Context(), "1")
		require.NoError(t, err)
		require.Zero(t, r.Errors)
		require.EqualValues(t, 1, r.Queries, "database queries for %d concurrent Gets of one cold key (%+v)",
			defaultConfig().Processes*defaultConfig().Goroutines, r)
	})

	t.Run("warm", func(t *testing.T) {
		r, err := newTestDemo(t).warm(t.Context(), "1")
		require.NoError(t, err)
		require.Zero(t, r.Errors)
		// A warm key is only missed when Redis failed (here: was too slow
		// for RedisTimeout) or the breaker skipped it; then the Get fails
		// open to the database.
		if r.RedisErrors == 0 && r.RedisSkipped == 0 {
			require.Equal(t, r.Gets, r.Hits, "%+v", r)
			require.Zero(t, r.Queries)
		} else {
			t.Logf("Redis was too slow for some Gets: %+v", r)
		}
	})

	t.Run("stale-set race", func(t *testing.T) {
		r, err := newTestDemo(t).staleSetRace(t.Context(), "2")
		require.NoError(t, err)
		require.Equal(t, User{ID: "2", Name: "Alan Turing", Version: 1}, r.ReaderGot)
		require.Equal(t, User{ID: "2", Name: "Alan M. Turing", Version: 2}, r.Written)
		require.GreaterOrEqual(t, r.StaleSetsPrevented, uint64(1))
		require.Equal(t, r.Written, r.NextGet)
	})

	t.Run("write-through", func(t *testing.T) {
		r, err := newTestDemo(t).writeThrough(t.Context(), "3")
		require.NoError(t, err)
		require.EqualValues(t, 2, r.Written.Version)
		require.Zero(t, r.Stale)
		require.Zero(t, r.Queries)
		require.EqualValues(t, defaultConfig().Processes, r.Hits)
	})

	t.Run("outage", func(t *testing.T) {
		r, err := newTestDemo(t).outage(t.Context(), "4")
		require.NoError(t, err)
		require.Zero(t, r.Errors, "Gets failed while Redis was down")
		require.Equal(t, r.Gets, r.Queries, "every Get answered from the database")
		require.NoError(t, r.WriteErr)
		require.EqualValues(t, 1, r.Queued)
		require.Equal(t, r.Written, r.After)
	})
}
