package cache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/script"
)

// BatchLoadFunc reads the values of keys from the source of truth in one
// call, typically one SELECT … WHERE id IN (…). Keys absent from the
// returned map do not exist, like a LoadFunc's ErrNotFound: they are cached
// as negative entries. Keys it was not asked for are ignored. An error fails
// every key of the call, except that an error matching ErrNotFound (or
// wrapping sql.ErrNoRows) says that none of them exists.
//
// It is called with at most 500 distinct keys and never with none. Its ctx
// carries the values of the call that started the load but not its
// cancellation; it ends after Options.LoadTimeout.
type BatchLoadFunc[T any] func(ctx context.Context, keys []string) (map[string]T, error)

// batchLoadMax is the most keys one BatchLoadFunc call is given: a bound
// on the size of an IN (…) list and of one pipeline of lease requests.
const batchLoadMax = 500

// loadOneOf turns a BatchLoadFunc into the LoadFunc of Get: a batch of one.
func loadOneOf[T any](load BatchLoadFunc[T]) LoadFunc[T] {
	return func(ctx context.Context, key string) (T, error) {
		var zero T
		m, err := load(ctx, []string{key})
		if err != nil {
			return zero, err
		}
		v, ok := m[key]
		if !ok {
			return zero, ErrNotFound
		}
		return v, nil
	}
}

// batchKey is one key of a GetMany that the batch load may answer.
type batchKey struct {
	key string
	c   caller // what the GetMany observed of key before asking
}

// getBatch answers the misses of a GetMany through the batch load. Each key
// joins the flight of its key in progress in this process when the P3b rule
// lets it (see mayJoin); the others get flights of their own, run together
// in rounds of at most batchLoadMax keys (see runBatch) on goroutines
// detached from ctx. It returns the keys whose joined flight turned out too
// old for this GetMany (see accepts), to be read again, and how many keys
// were left unanswered because ctx ended. budget is what is left of the
// GetMany's Redis budget.
func (l *Loader[T]) getBatch(ctx context.Context, budget redisBudget, keys []batchKey, res *manyResult[T]) (rejected []string, unanswered int) {
	if len(keys) == 0 {
		return nil, 0
	}
	flights := make([]*flight[T], len(keys))
	joined := make([]bool, len(keys))
	var own []*ownedKey[T]
	for i, k := range keys {
		f, started := l.flights.claim(k.key, k.c)
		flights[i], joined[i] = f, !started
		if started {
			own = append(own, &ownedKey[T]{key: k.key, rkey: l.Key(k.key), f: f})
		}
	}
	detached := context.WithoutCancel(ctx)
	for len(own) > 0 {
		n := min(len(own), batchLoadMax)
		round := own[:n:n]
		own = own[n:]
		l.bg.Go(func() { l.runBatch(detached, budget, round) })
	}

	for i, k := range keys {
		f := flights[i]
		select {
		case <-f.done:
		case <-ctx.Done():
			return rejected, len(keys) - i
		}
		if !accepts(k.c, &f.res) {
			// The flight began before an invalidation this GetMany must
			// respect.
			rejected = append(rejected, k.key)
			continue
		}
		if joined[i] {
			l.countIn(ctx, EventCoalesced)
		}
		l.countIn(ctx, EventMiss)
		res.add(k.key, f.res.val, f.res.err)
	}
	return rejected, 0
}

// ownedKey is a key whose flight a batch runs.
type ownedKey[T any] struct {
	key, rkey string
	f         *flight[T]
	ended     atomic.Bool // the flight was handed its result
}

// How runBatch loads one key.
type batchMode int

const (
	batchGranted   batchMode = iota // under the lease granted: fill
	batchTentative                  // the lease request failed on the way: it may be ours, try a fill after answering
	batchLoadOnly                   // Redis cannot help: load without filling
)

// runBatch runs the flights of keys (at most batchLoadMax): one pipelined
// round of lease requests, one BatchLoadFunc call for the keys granted (and
// for those Redis could not be asked about), one pipelined round of fills.
// Keys whose entry was filled meanwhile are answered from it; keys whose
// lease another process holds wait for its fill, each like Get. ctx is
// detached from the callers' cancellation; budget is what is left of the
// GetMany's Redis budget for the lease requests and the fills.
func (l *Loader[T]) runBatch(ctx context.Context, budget redisBudget, keys []*ownedKey[T]) {
	defer func() {
		// A bug here must not leave a flight without a result: its
		// callers would wait forever.
		if p := recover(); p != nil {
			err := newPanicError(p)
			for _, k := range keys {
				l.endFlight(k, result[T]{err: err}, nil)
			}
		}
	}()

	seq := l.seq.Add(1)
	tokens := make([]string, len(keys))
	calls := make([]script.Call, len(keys))
	notAfter, settled := l.acquireDeadline(budget.left)
	for i := range keys {
		tokens[i] = script.NewToken()
		calls[i] = script.Acquire(keys[i].rkey, tokens[i], l.s.leaseTimeout, script.ModeMiss, 0, notAfter)
	}
	// Per-key outcomes are in cmds; the error only repeats the first.
	cmds, _ := l.runScripts(ctx, &budget, calls)

	var (
		load  []int // indexes of the keys to load in the batch
		modes = make([]batchMode, len(keys))
		gens  = make([]int64, len(keys))
	)
	for i, k := range keys {
		if cmds[i] == nil {
			// Not sent: the breaker is open, or the budget is spent.
			modes[i] = batchLoadOnly
			load = append(load, i)
			continue
		}
		a, aerr := script.ParseAcquire(cmds[i])
		switch {
		case aerr != nil && answered(aerr):
			// Redis refused the request: no lease was granted.
			modes[i] = batchLoadOnly
			load = append(load, i)
			continue
		case aerr != nil:
			// The request may have reached Redis and the lease may be
			// ours (see fetch).
			modes[i] = batchTentative
			load = append(load, i)
			continue
		case a.Status == script.Late:
			// It ran after its deadline and granted nothing.
			modes[i] = batchLoadOnly
			load = append(load, i)
			continue
		}
		l.clock.observe(a.Now)
		switch a.Status {
		case script.Granted:
			k.f.grantGen.Store(a.Gen)
			modes[i], gens[i] = batchGranted, a.Gen
			load = append(load, i)
		case script.Usable:
			// Filled since GetMany read it.
			l.endWith(k, func(f *flight[T]) (result[T], func()) {
				return l.answerUsable(ctx, k.key, k.rkey, seq, a, f)
			})
		default: // script.Held
			l.countIn(ctx, EventLeaseWait)
			l.endWith(k, func(f *flight[T]) (result[T], func()) {
				return l.awaitHolder(ctx, k.key, k.rkey, a, f)
			})
		}
	}
	if len(load) == 0 {
		return
	}

	names := make([]string, len(load))
	for j, i := range load {
		names[j] = keys[i].key
	}
	loadSeq := l.seq.Add(1)
	start := time.Now()
	vals, lerr := l.callBatchLoad(ctx, names)
	delta := time.Since(start)

	results := make([]result[T], len(load))
	var now, later []store   // fills before answering, and after
	var tentative []store    // those of later whose lease request got no answer
	var nowAt, laterAt []int // their indexes in load
	for j, i := range load {
		r := &results[j]
		switch v, ok := vals[keys[i].key]; {
		case lerr != nil:
			r.err = lerr
		case ok:
			r.val, r.err = v, l.checkVersion(keys[i].key, v)
		default:
			r.err = ErrNotFound
		}
		switch modes[i] {
		case batchGranted:
			r.seq, r.gen = seq, gens[i]
			now = append(now, l.storeCall(keys[i].rkey, tokens[i], r.val, r.err, delta, false))
			nowAt = append(nowAt, j)
		case batchTentative:
			r.seq = loadSeq
			st := l.storeCall(keys[i].rkey, tokens[i], r.val, r.err, delta, true)
			later = append(later, st)
			laterAt = append(laterAt, j)
			tentative = append(tentative, st)
		default:
			r.seq = loadSeq
		}
	}

	// Fill before answering while the budget lasts, so that the callers'
	// next reads find the values; what could not be stored is stored
	// after answering, with a budget of its own.
	stored := make([]bool, len(now))
	if budget.left >= minStoreBudget && len(now) > 0 {
		stored = l.storeMany(ctx, &budget, now)
	}
	for s, j := range nowAt {
		if !stored[s] {
			later = append(later, now[s])
			laterAt = append(laterAt, j)
		}
	}
	if len(later) == 0 {
		for j, i := range load {
			l.endFlight(keys[i], results[j], nil)
		}
		return
	}
	// The flights of the keys stored after answering stay joinable until
	// their store is done, as with Get: a caller arriving meanwhile takes
	// the result instead of loading again.
	storedLater := make(chan struct{})
	waitStore := func() { <-storedLater }
	after := make(map[int]bool, len(laterAt))
	for _, j := range laterAt {
		after[j] = true
	}
	for j, i := range load {
		if after[j] {
			l.endWith(keys[i], func(*flight[T]) (result[T], func()) { return results[j], waitStore })
		} else {
			l.endFlight(keys[i], results[j], nil)
		}
	}
	l.storeManyAfter(ctx, later)
	close(storedLater)
	if len(tentative) > 0 {
		// Lease requests that got no answer may run yet: once they can
		// no longer grant, send their stores again (see storeSettled).
		l.waitSettled(settled)
		l.storeManyAfter(ctx, tentative)
	}
}

// endFlight hands r to k's flight (and runs after, which the flight's
// joiners do not wait for), unless the flight already ended.
func (l *Loader[T]) endFlight(k *ownedKey[T], r result[T], after func()) {
	if k.ended.Swap(true) {
		return
	}
	l.flights.run(k.key, k.f, func(*flight[T]) (result[T], func()) { return r, after })
}

// endWith ends k's flight with what run returns, on a goroutine of its own
// (k is marked ended at once).
func (l *Loader[T]) endWith(k *ownedKey[T], run func(f *flight[T]) (result[T], func())) {
	if k.ended.Swap(true) {
		return
	}
	l.bg.Go(func() { l.flights.run(k.key, k.f, run) })
}

// answerUsable answers a key whose entry was filled between GetMany's read
// and its lease request, as fetch does; a corrupt one goes through fetch,
// which replaces it.
func (l *Loader[T]) answerUsable(ctx context.Context, key, rkey string, seq uint64, a script.AcquireReply, f *flight[T]) (result[T], func()) {
	if r, ok := l.usable(rkey, seq, a); ok {
		return r, nil
	}
	return l.fetch(ctx, key, rkey, script.ModeReplace, redisBudget{left: l.s.redisTimeout}, f)
}

// awaitHolder waits for the fill of the process holding key's lease, like
// fetch: it answers from that fill, loads key alone when the wait runs out,
// or asks for the lease again (through fetch) when it lapsed.
func (l *Loader[T]) awaitHolder(ctx context.Context, key, rkey string, a script.AcquireReply, f *flight[T]) (result[T], func()) {
	r, outcome := l.awaitLease(ctx, rkey, a)
	switch outcome {
	case filled:
		return r, nil
	case gaveUp:
		return l.loadOnly(ctx, key), nil
	}
	return l.fetch(ctx, key, rkey, script.ModeMiss, redisBudget{left: l.s.redisTimeout}, f)
}

// runScripts sends calls in one pipeline per Redis Cluster master (one
// for all elsewhere), each through its master's breaker, by script hash and
// again by source those that found their script missing (script.Pipeline).
// It returns each call's command (nil for a call not sent: breaker open,
// budget spent) and the first error.
func (l *Loader[T]) runScripts(ctx context.Context, b *redisBudget, calls []script.Call) ([]*redis.Cmd, error) {
	return l.runScriptsWith(ctx, b, calls, l.redisCallKey)
}

// runScriptsWith is runScripts with its Redis calls made by call.
func (l *Loader[T]) runScriptsWith(ctx context.Context, b *redisBudget, calls []script.Call, call redisCaller) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	keys := make([]string, len(calls))
	for i, c := range calls {
		keys[i] = c.Key
	}
	err := l.perMaster(ctx, b, keys, call, func(ctx context.Context, idx []int) error {
		sub := make([]script.Call, len(idx))
		for j, i := range idx {
			sub[j] = calls[i]
		}
		sent, err := script.Pipeline(ctx, l.rdb, sub)
		for j, i := range idx {
			cmds[i] = sent[j]
		}
		return err
	})
	return cmds, err
}
