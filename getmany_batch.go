package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
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

// claim is the first half of flightGroup.do, without the wait: it returns
// the flight in progress for key that c may join, or registers a new one
// (started true). The caller must end a started flight with g.run, or the
// callers joining it wait forever.
func (g *flightGroup[T]) claim(key string, c caller) (f *flight[T], started bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = make(map[string]*flight[T])
	}
	if f, ok := g.m[key]; ok && mayJoin(c, f) {
		return f, false
	}
	f = &flight[T]{done: make(chan struct{})}
	g.m[key] = f
	return f, true
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
			l.count(EventCoalesced)
		}
		l.count(EventMiss)
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
	calls := make([]scriptCall, len(keys))
	lease := ms(l.s.leaseTimeout)
	for i := range keys {
		tokens[i] = newToken()
		calls[i] = scriptCall{script.Acquire, keys[i].rkey, []any{tokens[i], lease, modeMiss, 0}}
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
		a, aerr := parseAcquireCmd(cmds[i])
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
		}
		l.clock.observe(a.now)
		switch a.status {
		case script.Granted:
			k.f.grantGen.Store(a.gen)
			modes[i], gens[i] = batchGranted, a.gen
			load = append(load, i)
		case script.Usable:
			// Filled since GetMany read it.
			l.endWith(k, func(f *flight[T]) (result[T], func()) {
				return l.answerUsable(ctx, k.key, k.rkey, seq, a, f)
			})
		default: // script.Held
			l.count(EventLeaseWait)
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
	var now, later []storeOp // fills before answering, and after
	var nowAt, laterAt []int // their indexes in load
	for j, i := range load {
		r := &results[j]
		switch v, ok := vals[keys[i].key]; {
		case lerr != nil:
			r.err = lerr
		case ok:
			r.val = v
		default:
			r.err = ErrNotFound
		}
		switch modes[i] {
		case batchGranted:
			r.seq, r.gen = seq, gens[i]
			now = append(now, l.storeOpFor(keys[i].rkey, tokens[i], r.val, r.err, delta, false))
			nowAt = append(nowAt, j)
		case batchTentative:
			r.seq = loadSeq
			later = append(later, l.storeOpFor(keys[i].rkey, tokens[i], r.val, r.err, delta, true))
			laterAt = append(laterAt, j)
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
	l.storeMany(ctx, &redisBudget{left: l.s.redisTimeout}, later)
	close(storedLater)
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
func (l *Loader[T]) answerUsable(ctx context.Context, key, rkey string, seq uint64, a acquireReply, f *flight[T]) (result[T], func()) {
	if a.flags&entry.FlagNegative != 0 {
		return result[T]{err: ErrNotFound, seq: seq, gen: a.gen}, nil
	}
	v, err := l.decode(a.payload)
	if err == nil {
		return result[T]{val: v, seq: seq, gen: a.gen}, nil
	}
	l.corrupt(rkey, err)
	return l.fetch(ctx, key, rkey, modeReplace, redisBudget{left: l.s.redisTimeout}, f)
}

// awaitHolder waits for the fill of the process holding key's lease, like
// fetch: it answers from that fill, loads key alone when the wait runs out,
// or asks for the lease again (through fetch) when it lapsed.
func (l *Loader[T]) awaitHolder(ctx context.Context, key, rkey string, a acquireReply, f *flight[T]) (result[T], func()) {
	r, outcome := l.awaitLease(ctx, rkey, a)
	switch outcome {
	case filled:
		return r, nil
	case gaveUp:
		return l.loadOnly(ctx, key), nil
	}
	return l.fetch(ctx, key, rkey, modeMiss, redisBudget{left: l.s.redisTimeout}, f)
}

// callBatchLoad runs the BatchLoadFunc bounded by LoadTimeout, turning a
// panic into an error and "no rows" into ErrNotFound, and records it as one
// load.
func (l *Loader[T]) callBatchLoad(ctx context.Context, keys []string) (m map[string]T, err error) {
	ctx, cancel := context.WithTimeout(ctx, l.s.loadTimeout)
	defer cancel()
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, newPanicError(p)
		}
		switch {
		case err == nil:
		case isNotFound(err):
			err = ErrNotFound
		default:
			l.stats.loadErrors.Add(1)
			err = fmt.Errorf("cache: batch load %s of %d keys: %w", l.name, len(keys), err)
		}
		l.stats.loads.Add(1)
		l.s.recorder.ObserveLoad(l.name, time.Since(start), err)
	}()
	return l.batch(ctx, keys)
}

// storeOp is one store of a load's outcome under a lease: a fill of a value
// or of a negative entry, or the release of the lease (see storeStep).
type storeOp struct {
	call      scriptCall
	fill      bool
	tentative bool // the lease may never have been ours: a refusal is not counted
}

// storeOpFor is storeStep's decision as a script call, to be pipelined.
func (l *Loader[T]) storeOpFor(rkey, token string, v T, err error, delta time.Duration, tentative bool) storeOp {
	fill := func(payload []byte, version int64, negative bool, keyTTL, softTTL time.Duration) storeOp {
		neg := "0"
		if negative {
			neg = "1"
		}
		return storeOp{fill: true, tentative: tentative, call: scriptCall{script.Fill, rkey, []any{
			token, payload, strconv.FormatInt(version, 10), neg, ms(keyTTL), ms(delta), softMS(softTTL), l.wakeChannel()}}}
	}
	release := storeOp{tentative: tentative, call: scriptCall{script.Release, rkey, []any{token, l.wakeChannel()}}}
	switch {
	case errors.Is(err, ErrNotFound) && !l.s.noNegative:
		return fill(nil, 0, true, l.s.negativeEntryTTL(), 0)
	case err != nil:
		return release
	}
	payload, version, err := l.encode(v)
	if err != nil {
		return release
	}
	ttl := l.s.valueTTL()
	return fill(payload, version, false, ttl+l.s.maxStale, ttl)
}

// storeMany sends ops in one pipelined round and reports, for each, whether
// Redis answered it. Refused fills are counted as stale sets prevented, as
// fill does.
func (l *Loader[T]) storeMany(ctx context.Context, b *redisBudget, ops []storeOp) []bool {
	answeredOK := make([]bool, len(ops))
	calls := make([]scriptCall, len(ops))
	for i, op := range ops {
		calls[i] = op.call
	}
	cmds, _ := l.runScripts(ctx, b, calls)
	for i, c := range cmds {
		if c == nil || c.Err() != nil {
			continue
		}
		answeredOK[i] = true
		if n, err := c.Int(); ops[i].fill && !ops[i].tentative && err == nil && n != script.Stored {
			l.count(EventStaleSetPrevented)
		}
	}
	return answeredOK
}

// scriptCall is one run of a one-key script.
type scriptCall struct {
	script *redis.Script
	key    string
	args   []any
}

// runScripts sends calls in one pipeline (one per Redis Cluster master,
// each through its master's breaker) by script hash, then those that found
// their script missing on their node again by source, as Script.Run does
// for one call and invalidate for its pipeline. Only the calls refused with
// NOSCRIPT are sent again: the others ran, and a lease request or fill must
// not run twice. It returns each call's command (nil for a call not sent:
// breaker open, budget spent) and the first error.
func (l *Loader[T]) runScripts(ctx context.Context, b *redisBudget, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	keys := make([]string, len(calls))
	for i, c := range calls {
		keys[i] = c.key
	}
	err := l.perMaster(ctx, b, keys, l.redisCallKey, func(ctx context.Context, idx []int) error {
		pipe := l.rdb.Pipeline()
		for _, i := range idx {
			c := calls[i]
			cmds[i] = c.script.EvalSha(ctx, pipe, []string{c.key}, c.args...)
		}
		err := pipeExec(ctx, pipe)
		if err == nil {
			return nil
		}
		var again []int
		for _, i := range idx {
			if err := cmds[i].Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			return err
		}
		pipe = l.rdb.Pipeline()
		for _, i := range again {
			c := calls[i]
			cmds[i] = c.script.Eval(ctx, pipe, []string{c.key}, c.args...)
		}
		_ = pipeExec(ctx, pipe)
		for _, i := range idx {
			if err := cmds[i].Err(); err != nil {
				return err
			}
		}
		return nil
	})
	return cmds, err
}

// pipeExec sends pipe; its error is that of the first failed command.
func pipeExec(ctx context.Context, pipe redis.Pipeliner) error {
	_, err := pipe.Exec(ctx)
	return err
}

// parseAcquireCmd decodes one pipelined acquire.
func parseAcquireCmd(c *redis.Cmd) (acquireReply, error) {
	vals, err := c.Slice()
	if err != nil {
		return acquireReply{}, err
	}
	return parseAcquire(vals)
}
