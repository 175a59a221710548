package local

import (
	"context"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// history is what a key's writer completed: versions in order, each with
// when its SET returned (now's clock).
type history struct {
	mu   sync.Mutex // protects the slices
	vers []int
	at   []int64
}

func (h *history) add(v int, at int64) {
	h.mu.Lock()
	h.vers, h.at = append(h.vers, v), append(h.at, at)
	h.mu.Unlock()
}

// before is the newest version whose write returned at or before t (0:
// none).
func (h *history) before(t int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := sort.Search(len(h.at), func(i int) bool { return h.at[i] > t })
	if i == 0 {
		return 0
	}
	return h.vers[i-1]
}

// raceTier runs writers (one per key: SET key v, v counting up) against
// readers that answer from the tier when allowed and otherwise read Redis
// and fill. It returns the reads answered from the tier, and fails on any
// answer older than the promise allows.
func raceTier(t *testing.T, maxLag time.Duration) (hits int64) {
	rdb := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, rdb, "local:")
	opts := StreamOptions{}
	if maxLag > 0 {
		opts.Interval = maxLag / 2
	}
	tr := newTier(t, rdb.Options(), prefix, opts)
	ctx := context.Background()
	const nkeys, writers, readers, reads = 16, 4, 16, 1000
	keys := make([]string, nkeys)
	hist := make([]*history, nkeys)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
		hist[i] = &history{}
		if err := rdb.Set(ctx, keys[i], 0, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wwg sync.WaitGroup
	for w := range writers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for v := 1; ; v++ {
				select {
				case <-stop:
					return
				default:
				}
				for i := w; i < nkeys; i += writers {
					if err := rdb.Set(ctx, keys[i], v, 0).Err(); err != nil {
						t.Error(err)
						return
					}
					hist[i].add(v, now())
				}
			}
		}()
	}
	var nhits, stale, fallbacks atomic.Int64
	var rwg sync.WaitGroup
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for range reads {
				i := rand.IntN(nkeys)
				start := now()
				// The promise: strict, every write completed before the
				// read began; bounded, every write completed maxLag before.
				must := hist[i].before(start - int64(maxLag))
				allowed := false
				if maxLag == 0 {
					allowed = tr.stream.Wait(ctx) == nil
				} else {
					allowed = tr.stream.Fresh(maxLag)
				}
				if allowed {
					if s, ok := tr.store.Get(keys[i]); ok {
						nhits.Add(1)
						if v, _ := strconv.Atoi(s); v < must {
							stale.Add(1)
							t.Errorf("key %d: tier answered %d, a read begun after %d returned (lag %v)", i, v, must, maxLag)
						}
						continue
					}
				} else {
					fallbacks.Add(1)
				}
				tk := tr.stream.Begin()
				s, err := rdb.Get(ctx, keys[i]).Result()
				if err != nil && err != redis.Nil {
					t.Error(err)
					return
				}
				if v, _ := strconv.Atoi(s); v < must {
					t.Errorf("key %d: Redis answered %d after %d returned", i, v, must)
				}
				tr.store.Fill(tk, keys[i], s, len(s), time.Minute)
			}
		}()
	}
	rwg.Wait()
	close(stop)
	wwg.Wait()
	st := tr.stream.Stats()
	t.Logf("lag %v: %d tier answers, %d not allowed, %d stale; stream %+v; store %+v",
		maxLag, nhits.Load(), fallbacks.Load(), stale.Load(), st, tr.store.Stats())
	return nhits.Load()
}

// TestRaceStrict: with writers running, no strict read from the tier is
// older than a write completed before the read began.
func TestRaceStrict(t *testing.T) {
	if hits := raceTier(t, 0); hits == 0 {
		t.Fatal("no read was answered from the tier: the test proved nothing")
	}
}

// TestRaceBounded: with MaxLag 5ms, no read from the tier is older than a
// write completed 5ms before the read began. (How many reads the tier
// answers depends on the machine's load; staleness must not.)
func TestRaceBounded(t *testing.T) {
	raceTier(t, 5*time.Millisecond)
}
