package local

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultMaxBytes is the tier's memory bound when none is given.
const DefaultMaxBytes = 64 << 20

// entryOverhead is what an entry costs beyond its key and its value's
// reported size: otter's node, the item, the hash table slot, the
// allocator's rounding. BenchmarkStoreMemory measured 272 heap bytes per
// entry of a 24-byte key and a value reported as 120 bytes (a struct
// holding a 100-byte string): 128 makes MaxBytes bound what it weighs.
const entryOverhead = 128

const (
	stripes = 256  // locks serializing fills and invalidations, by key hash
	slots   = 8192 // invalidation sequence numbers remembered, by key hash
)

// Sink is what a Stream applies invalidations to. Store implements it.
type Sink interface {
	// Invalidate drops the local copies of keys. It has returned only when
	// no fill whose read was sent before the call can store them any more.
	Invalidate(keys ...string)
	// Flush drops every local copy and refuses every fill begun before it.
	Flush()
	// Ticket records what has been applied so far, for a read about to be
	// sent (see Store).
	Ticket() Ticket
}

// StoreOptions configures a Store.
type StoreOptions struct {
	// MaxBytes bounds the bytes held: keys, values (as reported to Fill)
	// and a fixed per-entry overhead.
	// default: DefaultMaxBytes (64 MiB)
	MaxBytes uint64
}

// Store is the in-process tier: values by their Redis key, bounded by
// bytes, each expiring on its own TTL.
//
// The fill-race rule. A value read from Redis may enter the Store only if
// nothing that could have changed it was applied after its read was sent:
// the caller takes a Ticket (Stream.Begin) before sending the read and
// hands it to Fill with the value. Fill refuses when an invalidation of
// that key (or of a key sharing its slot) was applied after the Ticket was
// taken, or when the Store was flushed since. Fills and invalidations of
// one key are serialized by a stripe lock, so an invalidation applied
// concurrently with a fill either refuses it or removes what it stored:
// there is no instant at which a refused value can be read.
//
// Values are shared by every reader: a value's slices and maps must not
// be modified once filled.
type Store[V any] struct {
	cache *otter.Cache[string, item[V]]
	seed  maphash.Seed

	// epoch counts flushes; written with every stripe lock held, read
	// atomically by Ticket makers and under one stripe lock by Fill.
	epoch atomic.Uint64
	// seq numbers applied invalidations; a Ticket holds the value seen
	// when it was taken.
	seq atomic.Uint64

	locks [stripes]sync.Mutex
	// last[i] is the seq of the last invalidation applied to a key of
	// slot i; slot i is protected by locks[i%stripes].
	last [slots]uint64

	fills, refused, invalidations, flushes atomic.Uint64
	// closed is set by Close before its flush: a Fill or Invalidate that
	// takes its stripe after that leaves otter alone (which would start
	// its goroutines again).
	closed atomic.Bool

	// onFill, if set (by tests, before any Fill), runs inside Fill after
	// the fill-race check passed, with the key's stripe lock held.
	onFill func(key string)
}

type item[V any] struct {
	v      V
	expiry time.Duration // how long after the fill it expires
	weight uint32
}

// NewStore returns an empty Store. Close stops its goroutines.
func NewStore[V any](opts StoreOptions) *Store[V] {
	max := opts.MaxBytes
	if max == 0 {
		max = DefaultMaxBytes
	}
	s := &Store[V]{seed: maphash.MakeSeed()}
	s.cache = otter.Must(&otter.Options[string, item[V]]{
		MaximumWeight: max,
		Weigher:       func(_ string, it item[V]) uint32 { return it.weight },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, item[V]]) time.Duration {
			return e.Value.expiry
		}),
	})
	return s
}

// Ticket records what a Store had applied when a Redis read was about to
// be sent; Fill refuses the read's value if the Store applied anything
// since that could have changed it. The zero Ticket is refused.
type Ticket struct {
	epoch, seq uint64
	ok         bool
}

// Ticket returns a Ticket for a read about to be sent. Callers take it
// from Stream.Begin, which also checks that the stream is up. The epoch is
// read before the sequence: a flush between the two only makes the Ticket
// refused.
func (s *Store[V]) Ticket() Ticket {
	return Ticket{epoch: s.epoch.Load(), seq: s.seq.Load(), ok: true}
}

// Get returns the value stored for key, if any and not expired.
func (s *Store[V]) Get(key string) (V, bool) {
	it, ok := s.cache.GetIfPresent(key)
	return it.v, ok
}

// Fill stores v for key, to expire after ttl, if the Ticket taken before
// v was read allows it (see Store); size is v's size in bytes, for the
// memory bound. It reports whether v was stored.
func (s *Store[V]) Fill(t Ticket, key string, v V, size int, ttl time.Duration) bool {
	if !t.ok || ttl <= 0 {
		s.refused.Add(1)
		return false
	}
	w := uint64(len(key)) + uint64(max(size, 0)) + entryOverhead
	if w > 1<<32-1 {
		w = 1<<32 - 1
	}
	slot := s.slot(key)
	mu := &s.locks[slot%stripes]
	mu.Lock()
	defer mu.Unlock()
	if s.epoch.Load() != t.epoch || s.last[slot] > t.seq || s.closed.Load() {
		s.refused.Add(1)
		return false
	}
	if s.onFill != nil {
		s.onFill(key)
	}
	s.cache.Set(key, item[V]{v: v, expiry: ttl, weight: uint32(w)})
	s.fills.Add(1)
	return true
}

// Invalidate drops the local copies of keys and refuses fills of them
// whose Tickets were taken before. Redis writes made by this process call
// it before they return; a Stream calls it for every key Redis reports.
func (s *Store[V]) Invalidate(keys ...string) {
	for _, key := range keys {
		slot := s.slot(key)
		mu := &s.locks[slot%stripes]
		mu.Lock()
		// The sequence number is taken under the lock: a Fill holding it
		// compares against either the old or the new value, never a value
		// in between (a Ticket taken now reads the new seq, and its read
		// is sent after this invalidation was applied).
		s.last[slot] = s.seq.Add(1)
		if !s.closed.Load() {
			s.cache.Invalidate(key)
		}
		mu.Unlock()
		s.invalidations.Add(1)
	}
}

// Flush drops every local copy and refuses every fill whose Ticket was
// taken before it returned.
func (s *Store[V]) Flush() { s.flush(!s.closed.Load()) }

// flush is Flush; clear says whether otter may still be called.
func (s *Store[V]) flush(clear bool) {
	for i := range s.locks {
		s.locks[i].Lock()
	}
	// With every stripe held no Fill is between its check and its Set:
	// each one either stored before the clear below or sees the new epoch.
	s.epoch.Add(1)
	if clear {
		s.cache.InvalidateAll()
	}
	for i := range s.locks {
		s.locks[i].Unlock()
	}
	s.flushes.Add(1)
}

// Epoch is the number of flushes so far.
func (s *Store[V]) Epoch() uint64 { return s.epoch.Load() }

// StoreStats are a Store's counters and gauges.
type StoreStats struct {
	Entries       int    // entries held (estimate)
	Bytes         uint64 // bytes held, as weighed
	Fills         uint64 // values stored
	Refused       uint64 // fills refused by the fill-race rule (or a zero TTL)
	Invalidations uint64 // keys invalidated
	Flushes       uint64 // flushes (stream failures)
}

// Stats returns the Store's counters.
func (s *Store[V]) Stats() StoreStats {
	return StoreStats{
		Entries:       s.cache.EstimatedSize(),
		Bytes:         s.cache.WeightedSize(),
		Fills:         s.fills.Load(),
		Refused:       s.refused.Load(),
		Invalidations: s.invalidations.Load(),
		Flushes:       s.flushes.Load(),
	}
}

// Close drops every entry and stops the Store's goroutines; the Store
// then refuses every fill. Calls racing with Close are safe.
func (s *Store[V]) Close() {
	if s.closed.Swap(true) {
		return
	}
	s.flush(true)
	s.cache.StopAllGoroutines()
}

func (s *Store[V]) slot(key string) uint64 {
	return maphash.String(s.seed, key) % slots
}
