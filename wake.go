package cache

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// wakeups lets Gets waiting on another caller's lease be woken when it is
// filled or released, instead of finding out at their next poll. The fill
// and release scripts PUBLISH the entry's key on one channel per Loader
// namespace (publishing touches no key, so this is Cluster-safe); each
// Loader subscribes once, on its first wait, and wakes the local waiters of
// that key. Polling stays as the fallback: a wake-up that is lost (the
// subscription is not up yet, or Redis failed) only costs the poll interval.
type wakeups struct {
	mu      sync.Mutex // protects the fields below
	waiters map[string][]chan struct{}
	// started is set once the subscribing goroutine runs; ps is its
	// subscription once made; cancel ends a subscription being made.
	started bool
	ps      *redis.PubSub
	cancel  context.CancelFunc
	closed  bool
}

// wakeChannel is the channel the Loader's fills and releases publish on.
func (l *Loader[T]) wakeChannel() string { return l.prefix }

// watch returns a channel closed when rkey's lease is filled or released,
// and a func to stop watching.
func (l *Loader[T]) watch(rkey string) (<-chan struct{}, func()) {
	w := &l.wakeups
	ch := make(chan struct{})
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ch, func() {}
	}
	if !w.started {
		w.started = true
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = cancel
		l.bg.Go(func() { l.subscribeWakeups(ctx) })
	}
	if w.waiters == nil {
		w.waiters = make(map[string][]chan struct{})
	}
	w.waiters[rkey] = append(w.waiters[rkey], ch)
	return ch, func() { w.forget(rkey, ch) }
}

// subscribeWakeups subscribes to the wake-up channel and wakes the waiters
// of each key published, until Close (which cancels ctx).
func (l *Loader[T]) subscribeWakeups(ctx context.Context) {
	w := &l.wakeups
	ps := l.rdb.Subscribe(ctx, l.wakeChannel())
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		ps.Close()
		return
	}
	w.ps = ps
	w.mu.Unlock()
	for m := range ps.Channel() {
		w.wake(m.Payload)
	}
}

func (w *wakeups) wake(rkey string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ch := range w.waiters[rkey] {
		close(ch)
	}
	delete(w.waiters, rkey)
}

func (w *wakeups) forget(rkey string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chans := w.waiters[rkey]
	for i, c := range chans {
		if c == ch {
			chans = append(chans[:i], chans[i+1:]...)
			break
		}
	}
	if len(chans) == 0 {
		delete(w.waiters, rkey)
	} else {
		w.waiters[rkey] = chans
	}
}

// close ends the subscription, which ends the goroutine reading it.
func (w *wakeups) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.cancel != nil {
		w.cancel()
	}
	if w.ps != nil {
		w.ps.Close()
	}
}
