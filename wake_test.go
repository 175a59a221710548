package cache

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// subscribed waits until the Loader's wake-up subscription is active on
// the server (the SUBSCRIBE is sent asynchronously).
func subscribed(t *testing.T, l *Loader[row]) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.rdb.PubSubNumSub(context.Background(), l.wakeChannel()).Val()[l.wakeChannel()] == 0 {
		require.True(t, time.Now().Before(deadline), "the wake-up subscription never came up")
		time.Sleep(time.Millisecond) // waiting on the server's state; nothing to block on
	}
}

func TestWakeupOnFillAndRelease(t *testing.T) {
	for _, tc := range []struct {
		name    string
		loadErr error
	}{
		{"fill", nil},
		{"negative fill", ErrNotFound},
		{"release after a failed load", context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr, rdbA := fakeRedis(t)
			tbA, started, release := blockingTable()
			tbA.put("a", "one")
			hook := tbA.hook
			tbA.hook = func(ctx context.Context, k string, n int64) error {
				_ = hook(ctx, k, n)
				return tc.loadErr
			}
			a := newLoader(t, rdbA, tbA, &Options{RedisTimeout: time.Second})
			b := newLoader(t, newClient(t, mr.Addr()), newTable(), &Options{Prefix: a.s.prefix})

			woken, stop := b.watch(a.Key("a"))
			defer stop()
			subscribed(t, b)
			go a.Get(context.Background(), "a")
			<-started // A holds the lease and loads
			select {
			case <-woken:
				t.Fatal("woken before the lease was filled or released")
			default:
			}
			close(release)
			select {
			case <-woken:
			case <-time.After(10 * time.Second):
				t.Fatal("the waiter was never woken")
			}
		})
	}
}

func TestWakeupsEndWithClose(t *testing.T) {
	_, rdb := fakeRedis(t)
	l := newLoader(t, rdb, newTable(), nil)
	_, stop := l.watch(l.Key("a"))
	stop()
	subscribed(t, l)
	require.NoError(t, l.Close(), "Close ends the subscription and its goroutine")
	ch, stop := l.watch(l.Key("b"))
	defer stop()
	select {
	case <-ch:
		t.Fatal("a watch after Close is never woken")
	default:
	}
}
