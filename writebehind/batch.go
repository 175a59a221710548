package writebehind

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// call is one Add or AddOnce waiting for its round trip.
type call struct {
	ctx   context.Context // the caller's: a call whose caller left is not sent
	key   string
	delta int64
	token string        // AddOnce's, or "" for a plain Add
	err   error         // set before done is closed
	done  chan struct{} // closed when err is final
}

// batcher queues the calls of Add: while a round trip is in flight (at
// most maxFlights), the calls that arrive meanwhile go out together in the
// next one.
// Under low load a call goes out at once; under high load one round trip
// carries hundreds, which is what makes the write path cheap.
type batcher struct {
	mu     sync.Mutex // protects queue and flying
	queue  []*call
	flying int // goroutines sending; each takes the queue when its round trip ends
}

// maxFlights is how many round trips of one Counter may be in flight at
// once. Measured here (128 callers, 16 shards): 1 carried ~5 calls per
// script run and was fastest; 2, 4 and 8 made smaller batches of the same
// Redis work and were 25-35% slower.
const maxFlights = 1

// maxCalls is how many queued calls one round trip takes at most.
const maxCalls = 4096

// maxPairs is how many counter keys one script run (one log entry) holds:
// the script unpacks them into XADD's arguments, and Lua's stack is ~8000.
const maxPairs = 1000

func (b *batcher) submit(c *Counter, cl *call) {
	b.mu.Lock()
	b.queue = append(b.queue, cl)
	start := b.flying < maxFlights
	if start {
		b.flying++
	}
	b.mu.Unlock()
	if start {
		go b.fly(c)
	}
}

// fly sends the queue, round trip after round trip, until it is empty.
func (b *batcher) fly(c *Counter) {
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxCalls)
		if n == 0 {
			b.flying--
			if b.flying == 0 {
				b.queue = nil // let a burst's backing array go
			}
			b.mu.Unlock()
			return
		}
		calls := make([]*call, n)
		copy(calls, b.queue)
		b.queue = b.queue[n:]
		b.mu.Unlock()
		c.send(calls)
	}
}

// run is one script run: one AddOnce, or one shard's share of the plain
// Adds of a round trip, their deltas summed per key.
type run struct {
	shard       int
	token       string
	callerToken bool     // token is an AddOnce caller's (not random)
	keys        []string // distinct
	sums        []int64
	calls       []*call
}

// group splits calls into runs: each AddOnce alone, plain Adds one run per
// shard (more when a shard has more than maxPairs keys, or a key's sum
// would leave int64). Calls whose caller has left are answered and dropped.
func (c *Counter) group(calls []*call) []*run {
	var runs []*run
	open := map[int]*run{}
	index := map[*run]map[string]int{}
	for _, cl := range calls {
		if cl.ctx.Err() != nil {
			cl.finish(c, resultError, fmt.Errorf("writebehind: add to %s: not sent: %w", c.name, cl.ctx.Err()))
			continue
		}
		s := c.shardOf(cl.key)
		if cl.token != "" {
			runs = append(runs, &run{shard: s, token: cl.token, callerToken: true, keys: []string{cl.key}, sums: []int64{cl.delta}, calls: []*call{cl}})
			continue
		}
		r := open[s]
		if r != nil {
			if i, ok := index[r][cl.key]; ok {
				if sum, ok := addInt64(r.sums[i], cl.delta); ok {
					r.sums[i] = sum
					r.calls = append(r.calls, cl)
					continue
				}
				r = nil // the key's sum would overflow: a new run
			} else if len(r.keys) == maxPairs {
				r = nil
			}
		}
		if r == nil {
			r = &run{shard: s, token: newToken()}
			open[s], index[r] = r, map[string]int{}
			runs = append(runs, r)
		}
		index[r][cl.key] = len(r.keys)
		r.keys = append(r.keys, cl.key)
		r.sums = append(r.sums, cl.delta)
		r.calls = append(r.calls, cl)
	}
	return runs
}

func addInt64(a, b int64) (int64, bool) {
	s := a + b
	if (b > 0 && a > math.MaxInt64-b) || (b < 0 && a < math.MinInt64-b) {
		return 0, false
	}
	return s, true
}

// scriptArgs returns the add script's keys and arguments for r.
func (c *Counter) scriptArgs(r *run) ([]string, []any) {
	// Token sets are bucketed by this process's clock. go-redis resends
	// the very same keys and arguments, so a random token needs only its
	// bucket checked; an AddOnce retry recomputes them, possibly one bucket
	// later, so its run checks the previous bucket too: a retry is then
	// recognized for at least TokenTTL.
	bucket := time.Now().UnixMilli() / c.tokenTTL.Milliseconds()
	cur, prev := c.tokenKey(r.shard, bucket), c.tokenKey(r.shard, bucket-1)
	if !r.callerToken {
		prev = cur
	}
	keys := []string{c.pendingKey(r.shard), c.streamKey(r.shard), c.headKey(r.shard), cur, prev}
	args := make([]any, 0, 4+2*len(r.keys))
	args = append(args, r.token, 2*c.tokenTTL.Milliseconds(), c.maxLen, len(r.calls))
	for i, k := range r.keys {
		args = append(args, k, r.sums[i])
	}
	return keys, args
}

// send makes the round trip for calls: every run's script in one pipeline
// (on Cluster go-redis sends each node its share), then, with Replicas,
// WAIT on the same connection. Each call learns its run's outcome.
func (c *Counter) send(calls []*call) {
	runs := c.group(calls)
	if len(runs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()

	cmds, wait, err := c.pipeline(ctx, runs, false)
	// A server without the script (restarted, or new) answers NOSCRIPT to
	// the runs it did not execute: send those again with EVAL. A run that
	// did execute is never sent again here, and if it were, its token
	// would make it count once.
	var again []*run
	for i, r := range runs {
		if isNoScript(cmds[i].Err()) {
			again = append(again, r)
		}
	}
	if len(again) > 0 {
		var againCmds []*redis.Cmd
		againCmds, wait, err = c.pipeline(ctx, again, true)
		j := 0
		for i := range runs {
			if isNoScript(cmds[i].Err()) {
				cmds[i] = againCmds[j]
				j++
			}
		}
	}
	var notReplicated error
	if wait != nil && err == nil {
		if n, werr := wait.Int64(); werr != nil {
			notReplicated = fmt.Errorf("%w: WAIT: %v", ErrNotReplicated, werr)
		} else if n < int64(c.replicas) {
			notReplicated = fmt.Errorf("%w: %d of %d replicas within %v", ErrNotReplicated, n, c.replicas, c.waitFor)
		}
	}
	for i, r := range runs {
		res, err := cmds[i].Result()
		if err != nil {
			r.finish(c, resultError, fmt.Errorf("writebehind: add to %s: %w", c.name, err))
			continue
		}
		switch v := res.(type) {
		case string:
			r.finish(c, resultCounted, notReplicated)
		case int64:
			if v == -1 {
				r.finish(c, resultBacklogFull, ErrBacklogFull)
			} else {
				// Counted by an earlier run with this token: an AddOnce
				// retry, or go-redis's resend after a lost reply.
				r.finish(c, resultDuplicate, notReplicated)
			}
		default:
			r.finish(c, resultError, fmt.Errorf("writebehind: add to %s: unexpected reply %v", c.name, res))
		}
	}
}

// pipeline sends runs' scripts (EVALSHA, or EVAL when eval), and WAIT after
// them when the counter needs replicas.
func (c *Counter) pipeline(ctx context.Context, runs []*run, eval bool) ([]*redis.Cmd, *redis.Cmd, error) {
	var pipe redis.Pipeliner
	if c.single != nil {
		pipe = c.single.Pipeline() // one connection: WAIT covers the scripts before it
	} else {
		pipe = c.rdb.Pipeline()
	}
	cmds := make([]*redis.Cmd, len(runs))
	for i, r := range runs {
		keys, args := c.scriptArgs(r)
		if eval {
			cmds[i] = addScript.Eval(ctx, pipe, keys, args...)
		} else {
			cmds[i] = addScript.EvalSha(ctx, pipe, keys, args...)
		}
	}
	var wait *redis.Cmd
	if c.replicas > 0 {
		wait = pipe.Do(ctx, "WAIT", c.replicas, c.waitFor.Milliseconds())
	}
	_, err := pipe.Exec(ctx)
	return cmds, wait, err
}

func (r *run) finish(c *Counter, result string, err error) {
	for _, cl := range r.calls {
		cl.finish(c, result, err)
	}
}

func (cl *call) finish(c *Counter, result string, err error) {
	c.stats.count(c, result)
	cl.err = err
	close(cl.done)
}
