package local

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// upWithin bounds how long a test waits for a stream to come (back) up. It
// is a deadline for a condition, not a duration under test.
const upWithin = 20 * time.Second

// tier is a Store and the Stream feeding it, closed when the test ends.
type tier struct {
	store  *Store[string]
	stream *Stream
}

func newTier(t *testing.T, ropts *redis.Options, prefix string, opts StreamOptions) *tier {
	t.Helper()
	st := NewStore[string](StoreOptions{})
	opts.Redis, opts.Sink, opts.Prefixes = ropts, st, []string{prefix}
	s, err := NewStream(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		st.Close()
	})
	waitUp(t, s)
	return &tier{store: st, stream: s}
}

// filled sets prefix+"k" to "v1" in Redis, fills tr with it once the
// write's invalidation is applied, and returns the key.
func (tr *tier) filled(t *testing.T, rdb *redis.Client, prefix string) string {
	t.Helper()
	key := prefix + "k"
	rdb.Set(context.Background(), key, "v1", 0)
	mustWait(t, tr.stream)
	if _, ok := tr.fill(t, rdb, key); !ok {
		t.Fatal("fill refused")
	}
	return key
}

// waitUp waits until a barrier returns on s.
func waitUp(t *testing.T, s *Stream) {
	t.Helper()
	deadline := time.Now().Add(upWithin)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := s.Wait(ctx)
		cancel()
		if err == nil && s.Up() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream not up within %v: %v", upWithin, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fill reads key from Redis under a Ticket and fills the store with it.
func (tr *tier) fill(t *testing.T, rdb redis.UniversalClient, key string) (string, bool) {
	t.Helper()
	tk := tr.stream.Begin()
	v, err := rdb.Get(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return v, tr.store.Fill(tk, key, v, len(v), time.Minute)
}

func mustWait(t *testing.T, s *Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), upWithin)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatalf("barrier: %v", err)
	}
}

// TestBarrierOrdersInvalidations: a write completed on another connection,
// then a barrier: the write's invalidation has been applied.
func TestBarrierOrdersInvalidations(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "local:")
	tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
	ctx := context.Background()
	key := prefix + "k"
	for i := range 200 {
		if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		mustWait(t, tr.stream) // the SET's own invalidation is applied
		if v, ok := tr.fill(t, rdb, key); !ok || v != itoa(i) {
			t.Fatalf("round %d: fill %q %v", i, v, ok)
		}
		if err := rdb.Set(ctx, key, i+1, 0).Err(); err != nil {
			t.Fatal(err)
		}
		mustWait(t, tr.stream)
		if v, ok := tr.store.Get(key); ok {
			t.Fatalf("round %d: %q still held after a barrier", i, v)
		}
	}
	if st := tr.stream.Stats(); st.Keys < 400 || st.Breaks != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBoundedFresh: Fresh is true only after a barrier returned, and a
// barrier sent after a write has applied it.
func TestBoundedFresh(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "local:")
	tr := newTier(t, rdb.Options(), prefix, StreamOptions{Interval: time.Millisecond})
	if !tr.stream.Fresh(time.Hour) {
		t.Fatal("not fresh within an hour of a returned barrier")
	}
	if tr.stream.Fresh(0) {
		t.Fatal("fresh with a zero lag")
	}
}

func TestStreamRejectsOverlappingPrefixes(t *testing.T) {
	st := NewStore[int](StoreOptions{})
	defer st.Close()
	_, err := NewStream(StreamOptions{Redis: &redis.Options{}, Sink: st, Prefixes: []string{"a#2:", "a#2:b"}})
	if err == nil {
		t.Fatal("overlapping prefixes accepted")
	}
}

// TestClientKillFlushesAndRecovers: killing the stream's connection
// flushes the store, refuses fills begun before, and the stream comes back.
func TestClientKillFlushesAndRecovers(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "local:")
	tr := newTier(t, rdb.Options(), prefix, StreamOptions{})
	ctx := context.Background()
	key := tr.filled(t, rdb, prefix)
	before := tr.store.Stats().Flushes
	old := tr.stream.Begin()
	if err := rdb.ClientKillByFilter(ctx, "ID", itoa(int(tr.stream.clientID.Load()))).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return tr.store.Stats().Flushes > before }) // the flush done, not only begun
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("entry survived the flush")
	}
	if tr.store.Fill(old, key, "v1", 2, time.Minute) {
		t.Fatal("fill begun before the break was stored")
	}
	waitUp(t, tr.stream)
	rdb.Set(ctx, key, "v2", 0)
	mustWait(t, tr.stream)
	if v, ok := tr.fill(t, rdb, key); !ok || v != "v2" {
		t.Fatalf("after recovery: fill %q %v", v, ok)
	}
	rdb.Set(ctx, key, "v3", 0)
	mustWait(t, tr.stream)
	if _, ok := tr.store.Get(key); ok {
		t.Fatal("invalidation lost after recovery")
	}
	if st := tr.stream.Stats(); st.Breaks != 1 || st.Subscriptions != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestWaitFailsWhileDown: against a server that is not there, Begin
// refuses, Wait fails and Fresh is false.
func TestWaitFailsWhileDown(t *testing.T) {
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	s, err := NewStream(StreamOptions{Redis: &redis.Options{Addr: "127.0.0.1:1"}, Sink: st, Prefixes: []string{"local:x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Wait(context.Background()); !errors.Is(err, ErrDown) {
		t.Fatalf("Wait: %v", err)
	}
	if s.Fresh(time.Hour) || s.Up() {
		t.Fatal("fresh while down")
	}
	if st.Fill(s.Begin(), "local:xk", "v", 1, time.Minute) {
		t.Fatal("fill while down")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(upWithin)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", upWithin)
		}
		time.Sleep(time.Millisecond)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestWaitBoundedByMaxWait: with the receive loop held, the barrier cannot
// return; Wait gives up after MaxWait instead of waiting for the stream's
// Timeout.
func TestWaitBoundedByMaxWait(t *testing.T) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "local:")
	hold, held, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once sync.Once
	tr := newTier(t, rdb.Options(), prefix, StreamOptions{
		MaxWait: 10 * time.Millisecond,
		Timeout: time.Hour,
		onMessage: func([]string) {
			select {
			case <-hold:
				once.Do(func() { close(held); <-release })
			default:
			}
		},
	})
	defer close(release)
	close(hold)
	rdb.Set(context.Background(), prefix+"k", "v", 0)
	<-held
	if err := tr.stream.Wait(context.Background()); !errors.Is(err, ErrDown) {
		t.Fatalf("Wait with the loop held: %v", err)
	}
}
