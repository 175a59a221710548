package cache

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestConsistencySampling(t *testing.T) {
	for _, tc := range []struct {
		name         string
		behindBack   bool // change the row without telling the cache
		invalidate   bool // ... or with an invalidation (a write in flight, then done)
		inconsistent uint64
		judged       bool
	}{
		{"clean workload", false, false, 0, true},
		{"divergence injected", true, false, 1, true},
		{"write with invalidation is not an inconsistency", true, true, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			tb := newTable()
			tb.put("a", "one")
			ev := &events{}
			sampled := ev.on(EventSampled)
			l := newLoader(t, rdb, tb, &Options{SampleRate: 1, SampleDelay: 50 * time.Millisecond, Recorder: ev})
			ctx := context.Background()
			_, err := l.Get(ctx, "a") // miss: not sampled
			require.NoError(t, err)
			// Hold the check until the scenario is set: the check runs
			// SampleDelay after the hit, so change things right after it.
			_, err = l.Get(ctx, "a") // hit: sampled
			require.NoError(t, err)
			if tc.behindBack {
				tb.put("a", "two")
			}
			if tc.invalidate {
				require.NoError(t, l.Invalidate(ctx, "a"))
			}
			if tc.judged {
				wait(t, sampled, "the sampled check")
			} else {
				require.NoError(t, l.Close()) // the pending check is dropped or done
			}
			s := l.Stats()
			require.Equal(t, tc.inconsistent, s.Inconsistent)
			if !tc.judged {
				require.Zero(t, s.Sampled, "an invalidated entry is not judged")
			}
		})
	}
}

func TestSampleRateValidated(t *testing.T) {
	_, rdb := fakeRedis(t)
	for _, r := range []float64{-0.1, 1.5} {
		_, err := New(rdb, "x", nopLoad, &Options{SampleRate: r})
		require.ErrorContains(t, err, "Options.SampleRate")
	}
}
