package local

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestFillRace forces each interleaving of a fill (a value read from
// Redis under a Ticket) with an invalidation of its key, with hooks and
// barriers instead of sleeps. In every order the tier ends without the
// old value once the invalidation has been applied.
func TestFillRace(t *testing.T) {
	rdb := testenv.Redis(t, "")
	ctx := context.Background()

	t.Run("invalidation applied before the fill: refused", func(t *testing.T) {
		prefix := testenv.Prefix(t, rdb, "local:")
		tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
		key := prefix + "k"
		rdb.Set(ctx, key, "old", 0)
		mustWait(t, tr.stream)
		tk := tr.stream.Begin()
		v := rdb.Get(ctx, key).Val() // the read, sent after the Ticket
		rdb.Set(ctx, key, "new", 0)  // a write completes ...
		mustWait(t, tr.stream)       // ... and its invalidation is applied
		if tr.store.Fill(tk, key, v, len(v), time.Minute) {
			t.Fatal("a value read before an applied invalidation was stored")
		}
		if _, ok := tr.store.Get(key); ok {
			t.Fatal("refused value held")
		}
	})

	t.Run("invalidation received, applied after the fill: removed", func(t *testing.T) {
		prefix := testenv.Prefix(t, rdb, "local:")
		key := prefix + "k"
		var armed, held sync.Once
		arm := make(chan struct{})
		inHook, release := make(chan struct{}), make(chan struct{})
		opts := StreamOptions{onMessage: func(keys []string) {
			select {
			case <-arm:
			default:
				return
			}
			held.Do(func() {
				close(inHook)
				<-release
			})
		}}
		tr := newTier(t, rdb.Options(), prefix, opts)
		rdb.Set(ctx, key, "old", 0)
		mustWait(t, tr.stream)
		tk := tr.stream.Begin()
		v := rdb.Get(ctx, key).Val()
		armed.Do(func() { close(arm) })
		rdb.Set(ctx, key, "new", 0)
		<-inHook // the invalidation arrived; the loop holds it
		if !tr.store.Fill(tk, key, v, len(v), time.Minute) {
			t.Fatal("fill refused before anything was applied")
		}
		close(release)
		mustWait(t, tr.stream)
		if got, ok := tr.store.Get(key); ok {
			t.Fatalf("%q held after its invalidation was applied", got)
		}
	})

	t.Run("invalidation applied while the fill stores: removed", func(t *testing.T) {
		prefix := testenv.Prefix(t, rdb, "local:")
		tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
		key := prefix + "k"
		rdb.Set(ctx, key, "old", 0)
		mustWait(t, tr.stream)
		inFill, release := make(chan struct{}), make(chan struct{})
		tr.store.onFill = func(string) {
			close(inFill)
			<-release
		}
		tk := tr.stream.Begin()
		v := rdb.Get(ctx, key).Val()
		filled := make(chan bool)
		go func() { filled <- tr.store.Fill(tk, key, v, len(v), time.Minute) }()
		<-inFill // the fill passed its check and holds the key's stripe
		rdb.Set(ctx, key, "new", 0)
		waitDone := make(chan error)
		go func() { waitDone <- tr.stream.Wait(ctx) }() // applies behind the fill
		close(release)
		<-filled
		if err := <-waitDone; err != nil {
			t.Fatal(err)
		}
		if got, ok := tr.store.Get(key); ok {
			t.Fatalf("%q held after its invalidation was applied", got)
		}
	})

	t.Run("flush between ticket and fill: refused", func(t *testing.T) {
		prefix := testenv.Prefix(t, rdb, "local:")
		tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
		key := prefix + "k"
		tk := tr.stream.Begin()
		tr.store.Flush()
		if tr.store.Fill(tk, key, "v", 1, time.Minute) {
			t.Fatal("fill across a flush stored")
		}
	})

	t.Run("another key invalidated: stored", func(t *testing.T) {
		prefix := testenv.Prefix(t, rdb, "local:")
		tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
		key, other := prefix+"k", ""
		for i := 0; other == "" || tr.store.slot(other) == tr.store.slot(key); i++ {
			other = prefix + "o" + itoa(i)
		}
		tk := tr.stream.Begin()
		rdb.Set(ctx, other, "x", 0)
		mustWait(t, tr.stream)
		if !tr.store.Fill(tk, key, "v", 1, time.Minute) {
			t.Fatal("fill refused for another key's invalidation")
		}
	})

	t.Run("stream down: refused", func(t *testing.T) {
		st := NewStore[string](StoreOptions{})
		defer st.Close()
		if st.Fill(Ticket{}, "local:k", "v", 1, time.Minute) {
			t.Fatal("zero Ticket accepted")
		}
	})
}
