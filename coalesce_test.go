package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestReadCoalescing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, l *Loader[row], tb *table)
		want  string // what the Gets that arrived after the write see
		loads int64
	}{
		{"no write", func(*testing.T, *Loader[row], *table) {}, "a1", 1},
		{"Set", func(t *testing.T, l *Loader[row], tb *table) {
			require.NoError(t, l.Set(context.Background(), "a", tb.put("a", "a2")))
		}, "a2", 1},
		{"Invalidate", func(t *testing.T, l *Loader[row], tb *table) {
			tb.put("a", "a2")
			require.NoError(t, l.Invalidate(context.Background(), "a"))
		}, "a2", 2}, // the later Gets share one load
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			key := "t:row#2:a"
			var armed atomic.Bool
			var hmgets atomic.Int64
			var holdOnce sync.Once
			held := make(chan struct{})
			release := make(chan struct{})
			rdb.AddHook(&cmdHook{
				before: func(c hookCmd) error {
					name, k := c.name, c.key
					if name == "getrange" && k == key && armed.Load() {
						hmgets.Add(1)
					}
					return nil
				},
				// The first armed HMGET has been answered by Redis; its
				// reply is held until release.
				after: func(c hookCmd, _ error) error {
					if c.name == "getrange" && c.key == key && armed.Load() {
						holdOnce.Do(func() { close(held); <-release })
					}
					return nil
				},
			})
			tb := newTable()
			tb.put("a", "a1")
			// Generous budgets: the held read must not run out of one.
			l := newLoader(t, rdb, tb, &Options{Prefix: "t:", RedisTimeout: time.Minute})
			require.Equal(t, key, l.Key("a"))
			require.Equal(t, "a1", getRow(t, l, "a").Val)
			armed.Store(true)

			type res struct {
				v   row
				err error
			}
			first := make(chan res, 1)
			go func() {
				v, err := l.Get(context.Background(), "a")
				first <- res{v, err}
			}()
			<-held // A's read was sent and answered before the write
			tc.write(t, l, tb)

			// Gets that arrive now must wait for a read sent after them.
			later := make(chan res, 2)
			for range 2 {
				ctx := newArrivalCtx(1)
				go func() {
					v, err := l.Get(ctx, "a")
					later <- res{v, err}
				}()
				<-ctx.arrived // parked on the next read
			}
			close(release)

			r := <-first
			require.NoError(t, r.err)
			require.Equal(t, "a1", r.v.Val, "A's read was answered before the write")
			for range 2 {
				r := <-later
				require.NoError(t, r.err)
				require.Equal(t, tc.want, r.v.Val, "a Get never shares a read sent before it arrived")
			}
			require.EqualValues(t, 2, hmgets.Load(), "the two later Gets shared one read")
			require.Equal(t, tc.loads, tb.loads.Load())
		})
	}
}
