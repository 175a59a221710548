package cache

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestGetMany(t *testing.T) {
	mr, rdb := fakeRedis(t)
	tb := newTable()
	for i := range 8 {
		tb.put(strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	boom := errors.New("db down")
	tb.hook = func(_ context.Context, k string, _ int64) error {
		if k == "7" {
			return boom
		}
		return nil
	}
	l := newLoader(t, rdb, tb, nil)
	ctx := context.Background()
	for i := range 4 { // 0..3 cached
		_, err := l.Get(ctx, strconv.Itoa(i))
		require.NoError(t, err)
	}
	_, err := l.Get(ctx, "missing-cached") // a cached negative entry
	require.ErrorIs(t, err, ErrNotFound)
	loads := tb.loads.Load()
	hits := l.Stats().Hits

	keys := []string{"0", "1", "2", "3", "4", "5", "6", "7", "missing", "missing-cached", "0", "4"}
	got, err := l.GetMany(ctx, keys)
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, `"7"`)
	require.Len(t, got, 7, "found keys, each once; not-found and failed keys absent")
	for i := range 7 {
		require.Equal(t, "v"+strconv.Itoa(i), got[strconv.Itoa(i)].Val)
	}
	require.EqualValues(t, 4, l.Stats().Hits-hits, "the cached keys came from one pipelined read")
	require.EqualValues(t, 5, tb.loads.Load()-loads, "4, 5, 6, 7 and missing loaded; duplicates once")

	got, err = l.GetMany(ctx, []string{"4", "5", "6"})
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.EqualValues(t, 7, l.Stats().Hits-hits)

	_, err = l.GetMany(ctx, []string{"a", ""})
	require.ErrorIs(t, err, ErrEmptyKey)
	got, err = l.GetMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)

	mr.Close() // fail-open: everything from the database
	tb.hook = nil
	got, err = l.GetMany(ctx, []string{"0", "1"})
	require.NoError(t, err)
	require.Len(t, got, 2)
}

// batchTable is a table read through a BatchLoadFunc that records its calls.
type batchTable struct {
	*table
	mu    sync.Mutex // protects calls
	calls [][]string // the keys of each call, sorted
	// hook, when set, runs inside every call before the rows are read; n
	// counts the calls from 1.
	hook func(ctx context.Context, keys []string, n int) error
	// afterRead, when set, runs inside every call after the rows were read
	// (the slow reader).
	afterRead func(n int)
}

func newBatchTable() *batchTable { return &batchTable{table: newTable()} }

func (b *batchTable) loadMany(ctx context.Context, keys []string) (map[string]row, error) {
	b.mu.Lock()
	b.calls = append(b.calls, slices.Sorted(slices.Values(keys)))
	n := len(b.calls)
	b.mu.Unlock()
	if b.hook != nil {
		if err := b.hook(ctx, keys, n); err != nil {
			return nil, err
		}
	}
	m := make(map[string]row, len(keys))
	for _, k := range keys {
		if r, ok := b.get(k); ok {
			m[k] = r
		}
	}
	if b.afterRead != nil {
		b.afterRead(n)
	}
	return m, nil
}

// takeCalls returns the calls so far and forgets them.
func (b *batchTable) takeCalls() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.calls
	b.calls = nil
	return c
}

// newBatchLoader returns a NewBatch Loader of b on rdb with a fresh prefix
// (unless opts sets one).
func newBatchLoader(t *testing.T, rdb redis.UniversalClient, b *batchTable, opts *Options) *Loader[row] {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = testenv.Prefix(t, rdb, "cachetest:")
	}
	if o.RedisTimeout == 0 {
		o.RedisTimeout = testRedisTimeout // as newLoader
	}
	l, err := NewBatch(rdb, "row", b.loadMany, &o)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func TestNewBatchValidates(t *testing.T) {
	_, rdb := fakeRedis(t)
	_, err := NewBatch[row](rdb, "row", nil, nil)
	require.ErrorContains(t, err, "nil BatchLoadFunc")
	_, err = NewBatch(rdb, "", newBatchTable().loadMany, nil)
	require.Error(t, err)
}

func TestGetManyBatch(t *testing.T) {
	mr, rdb := fakeRedis(t)
	bt := newBatchTable()
	for i := range 8 {
		bt.put(strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	l := newBatchLoader(t, rdb, bt, nil)
	ctx := context.Background()

	// Get loads through the batch function, one key at a time.
	for i := range 3 {
		got, err := l.Get(ctx, strconv.Itoa(i))
		require.NoError(t, err)
		require.Equal(t, "v"+strconv.Itoa(i), got.Val)
	}
	_, err := l.Get(ctx, "gone-cached")
	require.ErrorIs(t, err, ErrNotFound)
	require.Equal(t, [][]string{{"0"}, {"1"}, {"2"}, {"gone-cached"}}, bt.takeCalls())

	before := l.Stats()
	keys := []string{"0", "1", "2", "3", "4", "5", "6", "7", "gone", "gone-cached", "0", "4", "gone"}
	got, err := l.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 8)
	for i := range 8 {
		require.Equal(t, row{"v" + strconv.Itoa(i), 1}, got[strconv.Itoa(i)])
	}
	require.Equal(t, [][]string{{"3", "4", "5", "6", "7", "gone"}}, bt.takeCalls(),
		"one batch call with exactly the misses, each once")
	d := l.Stats().minus(before)
	require.EqualValues(t, 3, d.Hits)
	require.EqualValues(t, 1, d.NegativeHits)
	require.EqualValues(t, 6, d.Misses, "counted per key, as Get counts them")
	require.EqualValues(t, 1, d.Loads, "one call of the batch function")
	require.Zero(t, d.Coalesced+d.LeaseWaits+d.RedisErrors+d.StaleSetsPrevented)

	// The misses were filled, the missing key as a negative entry.
	require.Equal(t, "1", fields(t, rdb, l.Key("gone"))["f"])
	require.True(t, mr.Exists(l.Key("7")))
	before = l.Stats()
	got, err = l.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 8)
	require.Empty(t, bt.takeCalls(), "all hits: nothing loaded")
	d = l.Stats().minus(before)
	require.EqualValues(t, 8, d.Hits)
	require.EqualValues(t, 2, d.NegativeHits)
	_, err = l.Get(ctx, "gone")
	require.ErrorIs(t, err, ErrNotFound)
	require.Empty(t, bt.takeCalls(), "the negative entry answers Get too")
}

func TestGetManyBatchRounds(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	const n = 2*batchLoadMax + 1
	var keys []string
	for i := range n {
		k := strconv.Itoa(i)
		keys = append(keys, k)
		bt.put(k, "v")
	}
	l := newBatchLoader(t, rdb, bt, &Options{RedisTimeout: time.Second})
	got, err := l.GetMany(context.Background(), keys)
	require.NoError(t, err)
	require.Len(t, got, n)
	calls := bt.takeCalls()
	require.Len(t, calls, 3)
	total := 0
	for _, c := range calls {
		require.LessOrEqual(t, len(c), batchLoadMax)
		total += len(c)
	}
	require.Equal(t, n, total)
	require.EqualValues(t, n, l.Stats().Misses)
}

func TestGetManyBatchWaitsForOtherProcessLease(t *testing.T) {
	mr, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("held", "theirs")
	bt.put("free", "mine")
	prefix := testenv.Prefix(t, rdb, "cachetest:")
	ev := &events{}
	l := newBatchLoader(t, rdb, bt, &Options{Prefix: prefix, Recorder: ev})
	// Another process, with a client of its own, holds the lease of "held".
	other := newBatchLoader(t, newClient(t, mr.Addr()), bt, &Options{Prefix: prefix})
	release := make(chan struct{})
	bt.hook = func(_ context.Context, keys []string, n int) error {
		if n == 1 {
			<-release
		}
		return nil
	}
	ctx := context.Background()
	otherDone := make(chan error, 1)
	go func() {
		_, err := other.Get(ctx, "held")
		otherDone <- err
	}()
	require.Eventually(t, func() bool { return len(bt.snapshotCalls()) == 1 }, 5*time.Second, time.Millisecond)

	waiting := ev.on(EventLeaseWait)
	type reply struct {
		got map[string]row
		err error
	}
	done := make(chan reply, 1)
	go func() {
		got, err := l.GetMany(ctx, []string{"held", "free"})
		done <- reply{got, err}
	}()
	wait(t, waiting, "GetMany to wait on the other process's lease")
	close(release)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, map[string]row{"held": {"theirs", 1}, "free": {"mine", 1}}, r.got)
	require.NoError(t, <-otherDone)
	require.Equal(t, [][]string{{"held"}, {"free"}}, bt.takeCalls(), "held was loaded by its holder only")
	require.EqualValues(t, 1, l.Stats().LeaseWaits)
	require.EqualValues(t, 2, l.Stats().Misses)
}

// snapshotCalls returns the calls so far.
func (b *batchTable) snapshotCalls() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func TestGetManyBatchJoinsFlight(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("a", "va")
	bt.put("b", "vb")
	l := newBatchLoader(t, rdb, bt, nil)
	// Get's load of "a" is held until GetMany's batch runs: by then
	// GetMany has decided to join it.
	batchRan := make(chan struct{})
	bt.hook = func(_ context.Context, keys []string, n int) error {
		switch n {
		case 1:
			<-batchRan
		case 2:
			close(batchRan)
		}
		return nil
	}
	ctx := context.Background()
	getDone := make(chan error, 1)
	go func() {
		_, err := l.Get(ctx, "a")
		getDone <- err
	}()
	require.Eventually(t, func() bool { return len(bt.snapshotCalls()) == 1 }, 5*time.Second, time.Millisecond)
	got, err := l.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Equal(t, map[string]row{"a": {"va", 1}, "b": {"vb", 1}}, got)
	require.NoError(t, <-getDone)
	require.Equal(t, [][]string{{"a"}, {"b"}}, bt.takeCalls(), "a was loaded once, by Get")
	s := l.Stats()
	require.EqualValues(t, 1, s.Coalesced)
	require.EqualValues(t, 3, s.Misses)
}

// failAcquire fails the pipelined lease requests of some keys without
// sending them, with err; the rest of the pipeline is sent.
func failAcquire(keys map[string]bool, err error) *cmdHook {
	return &cmdHook{partial: true, before: func(c hookCmd) error {
		if c.piped && c.name == "acquire" && keys[c.key] {
			return err
		}
		return nil
	}}
}

// replyErr is an error reply of Redis.
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

func TestGetManyBatchAcquireFailsForSomeKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"connection error", errors.New("injected: connection reset")},
		{"error reply", replyErr("ERR injected")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			bt := newBatchTable()
			for _, k := range []string{"a", "b", "c"} {
				bt.put(k, "v"+k)
			}
			l := newBatchLoader(t, rdb, bt, &Options{DisableBreaker: true})
			rdb.AddHook(failAcquire(map[string]bool{l.Key("b"): true}, tc.err))
			ctx := context.Background()
			got, err := l.GetMany(ctx, []string{"a", "b", "c"})
			require.NoError(t, err, "fail-open: no Redis error reaches the caller")
			require.Equal(t, map[string]row{"a": {"va", 1}, "b": {"vb", 1}, "c": {"vc", 1}}, got)
			require.Equal(t, [][]string{{"a", "b", "c"}}, bt.takeCalls(), "b is loaded with the others")
			require.Eventually(t, func() bool { return rdb.Exists(ctx, l.Key("a"), l.Key("c")).Val() == 2 },
				5*time.Second, time.Millisecond, "a and c were filled")
			require.Zero(t, rdb.Exists(ctx, l.Key("b")).Val(), "b, without a lease, was not cached")
			require.Zero(t, l.Stats().StaleSetsPrevented, "b's tentative fill is no stale set")
		})
	}
}

func TestGetManyBatchRedisDown(t *testing.T) {
	mr, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("a", "va")
	l := newBatchLoader(t, rdb, bt, &Options{BreakerFailures: 1})
	mr.Close()
	ctx := context.Background()
	for range 2 { // the read fails, then the breaker is open
		got, err := l.GetMany(ctx, []string{"a", "b"})
		require.NoError(t, err)
		require.Equal(t, map[string]row{"a": {"va", 1}}, got)
		require.Equal(t, [][]string{{"a", "b"}}, bt.takeCalls())
	}
	require.Equal(t, BreakerOpen, l.BreakerState())
}

func TestGetManyBatchPanics(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	for _, k := range []string{"a", "b", "c"} {
		bt.put(k, "v"+k)
	}
	l := newBatchLoader(t, rdb, bt, nil)
	ctx := context.Background()
	_, err := l.Get(ctx, "a")
	require.NoError(t, err)
	bt.hook = func(context.Context, []string, int) error { panic("boom") }

	got, err := l.GetMany(ctx, []string{"a", "b", "c"})
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "boom", pe.Value)
	require.ErrorContains(t, err, `"b"`)
	require.ErrorContains(t, err, `"c"`)
	require.Equal(t, map[string]row{"a": {"va", 1}}, got, "the hit is still answered")

	// The leases were released: the next GetMany loads at once.
	bt.hook = nil
	start := time.Now()
	got, err = l.GetMany(ctx, []string{"a", "b", "c"})
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.Less(t, time.Since(start), time.Second)
	require.Zero(t, l.Stats().LeaseWaits)
	require.EqualValues(t, 1, l.Stats().LoadErrors)
}

func TestGetManyBatchLoadError(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("a", "va")
	l := newBatchLoader(t, rdb, bt, nil)
	boom := errors.New("db down")
	bt.hook = func(context.Context, []string, int) error { return boom }
	ctx := context.Background()
	got, err := l.GetMany(ctx, []string{"a", "b"})
	require.ErrorIs(t, err, boom)
	require.Empty(t, got)
	for _, k := range []string{"a", "b"} {
		e := fields(t, rdb, l.Key(k))
		require.NotContains(t, e, "p", "a failed load is not cached")
		require.NotContains(t, e, "f")
		require.NotContains(t, e, "lo", "its lease was released")
	}

	// A batch that says "no rows" at all: every key is not found.
	bt.hook = func(context.Context, []string, int) error { return sql.ErrNoRows }
	got, err = l.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, "1", fields(t, rdb, l.Key("b"))["f"], "negative entry")
}

func TestGetManyBatchCancelled(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("a", "va")
	bt.put("b", "vb")
	l := newBatchLoader(t, rdb, bt, nil)
	bg := context.Background()
	_, err := l.Get(bg, "a")
	require.NoError(t, err)
	bt.takeCalls()

	release := make(chan struct{})
	started := make(chan struct{})
	bt.hook = func(ctx context.Context, _ []string, _ int) error {
		close(started)
		<-release
		return ctx.Err() // the load does not see the caller's cancellation
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	var (
		got map[string]row
	)
	go func() {
		defer close(done)
		got, err = l.GetMany(ctx, []string{"a", "b"})
	}()
	<-started
	cancel()
	<-done
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "1 keys unanswered")
	require.Equal(t, map[string]row{"a": {"va", 1}}, got)

	// The load goes on and fills Redis for the next caller.
	close(release)
	require.Eventually(t, func() bool { return hasField(t, rdb, l.Key("b"), "p") }, 5*time.Second, time.Millisecond)
	bt.hook = nil
	got, err = l.GetMany(bg, []string{"a", "b"})
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, [][]string{{"b"}}, bt.takeCalls())

	_, err = l.GetMany(ctx, []string{"a"})
	require.ErrorIs(t, err, context.Canceled, "an ended ctx is reported before any work")
}

func TestGetManyBatchNoStaleReadAfterInvalidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  func(l *Loader[row]) error // the read that loads the old row
	}{
		{"behind Get", func(l *Loader[row]) error { _, err := l.Get(context.Background(), "k"); return err }},
		{"behind GetMany", func(l *Loader[row]) error {
			_, err := l.GetMany(context.Background(), []string{"k"})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rdb := fakeRedis(t)
			bt := newBatchTable()
			bt.put("k", "old")
			l := newBatchLoader(t, rdb, bt, nil)
			read := make(chan struct{})
			release := make(chan struct{})
			bt.afterRead = func(n int) {
				if n == 1 {
					close(read) // the old row was read
					<-release
				}
			}
			oldDone := make(chan error, 1)
			go func() { oldDone <- tc.old(l) }()
			<-read

			// The row changes and the invalidation completes while the
			// old load is still in flight; then GetMany begins.
			bt.put("k", "new")
			require.NoError(t, l.Invalidate(context.Background(), "k"))
			got, err := l.GetMany(context.Background(), []string{"k"})
			require.NoError(t, err)
			require.Equal(t, row{"new", 2}, got["k"], "never the value loaded before the invalidation")
			close(release)
			require.NoError(t, <-oldDone)
			require.Greater(t, l.Stats().StaleSetsPrevented, uint64(0), "the old fill was rejected")
			v, err := l.Get(context.Background(), "k")
			require.NoError(t, err)
			require.Equal(t, row{"new", 2}, v)
		})
	}
}

func TestGetManyBatchVersionedFill(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("k", "v1")
	l := newBatchLoader(t, rdb, bt, nil)
	ctx := context.Background()
	// While the batch load holds v1, a Set of v2 lands: the fill of v1 is
	// refused (the Set voided the lease) and v2 stays.
	var setErr error
	bt.afterRead = func(n int) {
		if n == 1 {
			setErr = l.Set(ctx, "k", bt.put("k", "v2"))
		}
	}
	got, err := l.GetMany(ctx, []string{"k"})
	require.NoError(t, err)
	require.NoError(t, setErr)
	require.Equal(t, row{"v1", 1}, got["k"], "what the batch read; the Set came after")
	require.EqualValues(t, 1, l.Stats().StaleSetsPrevented)
	v, err := l.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, row{"v2", 2}, v)
}

func TestGetManyBatchAfterScriptFlush(t *testing.T) {
	_, rdb := fakeRedis(t)
	bt := newBatchTable()
	bt.put("a", "va")
	bt.put("b", "vb")
	l := newBatchLoader(t, rdb, bt, nil)
	ctx := context.Background()
	_, err := l.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	require.NoError(t, l.Invalidate(ctx, "a", "b"))
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	bt.takeCalls()
	got, err := l.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err, "the pipelined scripts fall back to EVAL on NOSCRIPT")
	require.Len(t, got, 2)
	require.Equal(t, [][]string{{"a", "b"}}, bt.takeCalls())
	require.True(t, hasField(t, rdb, l.Key("a"), "p"), "filled")
	require.Zero(t, l.Stats().RedisErrors)
}

// beforeAcquire runs fn once, before the first pipeline of lease requests
// is sent.
func beforeAcquire(fn func()) *cmdHook {
	var once sync.Once
	return &cmdHook{pipeline: func(cmds []hookCmd) {
		if cmds[0].name == "acquire" {
			once.Do(fn)
		}
	}}
}

func TestGetManyBatchFilledBeforeLease(t *testing.T) {
	mr, rdb := fakeRedis(t)
	bt := newBatchTable()
	prefix := testenv.Prefix(t, rdb, "cachetest:")
	// The hook runs within the lease request's budget: make it ample.
	l := newBatchLoader(t, rdb, bt, &Options{Prefix: prefix, RedisTimeout: 5 * time.Second})
	other := newBatchLoader(t, newClient(t, mr.Addr()), bt, &Options{Prefix: prefix})
	ctx := context.Background()
	var setErr error
	rdb.AddHook(beforeAcquire(func() {
		// Between GetMany's read and its lease request, another process
		// writes a and stores b's negative entry.
		setErr = other.Set(ctx, "a", bt.put("a", "written"))
		if setErr == nil {
			_, setErr = other.Get(ctx, "b")
		}
	}))
	got, err := l.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.ErrorIs(t, setErr, ErrNotFound)
	require.Equal(t, map[string]row{"a": {"written", 1}}, got)
	require.Equal(t, [][]string{{"b"}}, bt.takeCalls(), "only the other process loaded")
	require.EqualValues(t, 2, l.Stats().Misses)
}

// GetMany's hits are hits like Get's: one near its expiry starts an early
// refresh, and hits are sampled for consistency.
func TestGetManyHitsRefreshAndSample(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	ev := &events{}
	refreshed := ev.on(EventRefresh)
	sampled := ev.on(EventSampled)
	l := newLoader(t, rdb, tb, &Options{TTL: time.Minute, DisableJitter: true, RedisTimeout: relaxedTimeout,
		SampleRate: 1, SampleDelay: time.Millisecond, Recorder: ev})
	seedRow(t, l, "a", tb.put("a", "a1"))
	seedRow(t, l, "b", tb.put("b", "b1"))
	nearExpiry(t, l, "a")

	got, err := l.GetMany(context.Background(), []string{"a", "b"})
	require.NoError(t, err)
	require.Equal(t, "a1", got["a"].Val)
	require.Equal(t, "b1", got["b"].Val)
	wait(t, refreshed, "the early refresh of a")
	wait(t, sampled, "a sampled hit")
	require.EqualValues(t, 1, l.Stats().Refreshes, "only a is near its expiry")
}

// Without a batch load, GetMany's misses go through Get's path starting
// from GetMany's own read: each key is read once.
func TestGetManyMissesReadOnce(t *testing.T) {
	_, rdb := fakeRedis(t)
	tb := newTable()
	for i := range 5 {
		tb.put(fmt.Sprint("k", i), fmt.Sprint("v", i))
	}
	l := newLoader(t, rdb, tb, &Options{RedisTimeout: relaxedTimeout})
	reads := &entryReads{}
	rdb.AddHook(reads.hook())

	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	got, err := l.GetMany(context.Background(), keys)
	require.NoError(t, err)
	require.Len(t, got, 5)
	for i, k := range keys {
		require.Equal(t, fmt.Sprint("v", i), got[k].Val)
	}
	require.Zero(t, reads.singles.Load(), "no key read again on its own")
	require.Equal(t, [][]string{{l.Key("k0"), l.Key("k1"), l.Key("k2"), l.Key("k3"), l.Key("k4")}}, reads.taken())
	require.EqualValues(t, 5, tb.loads.Load())
	require.EqualValues(t, 5, l.Stats().Misses)

	// And they were filled: the next GetMany is all hits.
	_, err = l.GetMany(context.Background(), keys)
	require.NoError(t, err)
	require.EqualValues(t, 5, l.Stats().Hits)
}
