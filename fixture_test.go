package cache

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/script"
	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// row is the value type of most tests: versioned like a database row.
type row struct {
	Val string `json:"val"`
	Ver int64  `json:"ver"`
}

func (r row) CacheVersion() int64 { return r.Ver }

// table is an in-memory stand-in for a database table.
type table struct {
	mu   sync.Mutex // protects rows
	rows map[string]row

	loads atomic.Int64
	// hook, when set, runs inside every load after the row was read; it
	// lets a test hold a load at that point (the slow reader).
	hook func(ctx context.Context, key string, n int64) error
}

func newTable() *table { return &table{rows: map[string]row{}} }

func (tb *table) put(key, val string) row {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	r := row{Val: val, Ver: tb.rows[key].Ver + 1}
	tb.rows[key] = r
	return r
}

func (tb *table) load(ctx context.Context, key string) (row, error) {
	n := tb.loads.Add(1)
	tb.mu.Lock()
	r, ok := tb.rows[key]
	tb.mu.Unlock()
	if tb.hook != nil {
		if err := tb.hook(ctx, key, n); err != nil {
			return row{}, err
		}
	}
	if !ok {
		return row{}, ErrNotFound
	}
	return r, nil
}

// events is a Recorder that also signals each event on a channel, so tests
// can wait for background work without sleeping.
type events struct {
	mu      sync.Mutex // protects waiters
	waiters map[Event]chan struct{}
}

func (e *events) Count(_ string, ev Event) {
	e.mu.Lock()
	ch := e.waiters[ev]
	e.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (e *events) ObserveLoad(string, time.Duration, error) {}

// on returns a channel that receives (without blocking the Loader) when ev
// is counted.
func (e *events) on(ev Event) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.waiters == nil {
		e.waiters = map[Event]chan struct{}{}
	}
	ch := make(chan struct{}, 64)
	e.waiters[ev] = ch
	return ch
}

// testRedisTimeout is the RedisTimeout of newLoader's Loaders unless the
// test sets one.
const testRedisTimeout = 2 * time.Second

// newLoader returns a Loader of tb on rdb with a fresh prefix.
func newLoader(t *testing.T, rdb redis.UniversalClient, tb *table, opts *Options) *Loader[row] {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	o := *opts
	if o.Prefix == "" {
		o.Prefix = testenv.Prefix(t, rdb, "cachetest:")
	}
	if o.RedisTimeout == 0 {
		// Tests that count events must not depend on the machine's
		// load: under -race on a busy machine a 50ms budget runs out, and
		// a Get then fails open (counted, and loaded), as it should. Tests
		// of the budget itself set RedisTimeout.
		o.RedisTimeout = testRedisTimeout
	}
	l, err := New(rdb, "row", tb.load, &o)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func (tb *table) get(key string) (row, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	r, ok := tb.rows[key]
	return r, ok
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// fields returns the entry at rkey as the fields of the hash it would have
// been before entry format 2 (p, f, g, v, s, d, lo, ld), each present when
// that format would have had it: tests read entries through it.
func fields(t testing.TB, rdb redis.Cmdable, rkey string) map[string]string {
	t.Helper()
	s, err := rdb.Get(context.Background(), rkey).Result()
	if errors.Is(err, redis.Nil) {
		return map[string]string{}
	}
	require.NoError(t, err)
	return fieldsOf(t, s)
}

// fieldsOf is fields of an entry's value.
func fieldsOf(t testing.TB, s string) map[string]string {
	t.Helper()
	f, err := entryFields(s)
	require.NoError(t, err, "entry %q", s)
	return f
}

// entryFields is fieldsOf, with an error for a corrupt entry.
func entryFields(s string) (map[string]string, error) {
	e, err := entry.Decode(s, len(s))
	if err != nil {
		return nil, err
	}
	f := map[string]string{
		"g": strconv.FormatInt(e.Generation, 10),
		"v": strconv.FormatInt(e.Version, 10),
		"d": strconv.FormatInt(e.Delta, 10),
	}
	if e.HasPayload {
		f["p"] = e.Payload
	}
	if fl := e.Flags & (entry.FlagNegative | entry.FlagInvalidated); fl != 0 {
		f["f"] = strconv.FormatInt(fl, 10)
	}
	if e.SoftExpiry > 0 {
		f["s"] = strconv.FormatInt(e.SoftExpiry, 10)
	}
	if e.LeaseOwner != "" {
		f["lo"], f["ld"] = e.LeaseOwner, strconv.FormatInt(e.LeaseDeadline, 10)
	}
	return f, nil
}

// putEntry writes an entry by hand: a header (entry.Header) and a payload.
func putEntry(t testing.TB, rdb redis.Cmdable, rkey, header, payload string) {
	t.Helper()
	require.NoError(t, rdb.Set(context.Background(), rkey, header+payload, time.Minute).Err())
}

// hasField reports whether fields(t, rdb, rkey) has f.
func hasField(t testing.TB, rdb redis.Cmdable, rkey, f string) bool {
	t.Helper()
	_, ok := fields(t, rdb, rkey)[f]
	return ok
}

// editEntry rewrites the header of the entry at rkey with edit applied to
// it (SETRANGE: its payload and TTL stay).
func editEntry(t testing.TB, rdb redis.Cmdable, rkey string, edit func(e *entry.Entry)) {
	t.Helper()
	ctx := context.Background()
	s, err := rdb.Get(ctx, rkey).Result()
	require.NoError(t, err)
	e, err := entry.Decode(s, len(s))
	require.NoError(t, err)
	edit(&e)
	h := entry.Header(e.Flags, e.Generation, e.Version, e.SoftExpiry, e.Delta, e.LeaseDeadline, e.LeaseOwner)
	require.NoError(t, rdb.SetRange(ctx, rkey, 0, h).Err())
}

// onBothRedis runs f as a subtest against miniredis and against the real
// Redis.
func onBothRedis(t *testing.T, f func(t *testing.T, rdb redis.UniversalClient)) {
	t.Run("miniredis", func(t *testing.T) { _, r := fakeRedis(t); f(t, r) })
	t.Run("redis", func(t *testing.T) { f(t, testenv.Redis(t, "")) })
}

// relaxedTimeout is the RedisTimeout of tests about something other than
// timing: a budget no Redis call runs out of, even on a loaded machine.
// (Tests that close Redis keep short ones: go-redis retries a refused
// connection for almost 2s, until the budget ends.)
const relaxedTimeout = 5 * time.Second

// errUnreachable is what a cmdHook answers for a command it fails: a
// client-side failure, like a Redis that cannot be reached.
var errUnreachable = errors.New("test: redis unreachable")

// cmdHook is the tests' one go-redis hook: it lets a test watch, hold, fail
// or lose the replies of the commands of one client, sent on their own or
// in a pipeline. Add it before the client is used; its funcs must be safe
// for concurrent use.
type cmdHook struct {
	// before runs before a command is sent; an error fails the command
	// without sending it. In a pipeline it runs for each command in turn
	// until one fails, and then fails them all, sending none (unless
	// partial).
	before func(c hookCmd) error
	// after runs once the reply has arrived, with its error; it may hold
	// the reply. An error it returns replaces the reply's: a reply lost on
	// the way.
	after func(c hookCmd, err error) error
	// pipeline runs before a pipeline is sent (and before before), with
	// its commands.
	pipeline func(cmds []hookCmd)
	// partial makes a pipeline fail only the commands before fails and
	// send the others; it then returns the first failure.
	partial bool
}

// hookCmd is a command as a cmdHook shows it.
type hookCmd struct {
	ctx   context.Context // the context it is sent with
	name  string          // as cmdName names it
	key   string          // its first key
	piped bool            // sent in a pipeline
}

func newHookCmd(ctx context.Context, cmd redis.Cmder, piped bool) hookCmd {
	name, key := cmdName(cmd)
	return hookCmd{ctx: ctx, name: name, key: key, piped: piped}
}

func (h *cmdHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c := newHookCmd(ctx, cmd, false)
		if h.before != nil {
			if err := h.before(c); err != nil {
				cmd.SetErr(err)
				return err
			}
		}
		err := next(ctx, cmd)
		if h.after != nil {
			if lost := h.after(c, err); lost != nil {
				cmd.SetErr(lost)
				err = lost
			}
		}
		return err
	}
}

func (h *cmdHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		hcs := make([]hookCmd, len(cmds))
		for i, cmd := range cmds {
			hcs[i] = newHookCmd(ctx, cmd, true)
		}
		if h.pipeline != nil {
			h.pipeline(hcs)
		}
		send := cmds
		failedBefore := make([]bool, len(cmds))
		var failed error // the first command before failed
		if h.before != nil {
			send = cmds[:0:0]
			for i, cmd := range cmds {
				err := h.before(hcs[i])
				if err == nil {
					send = append(send, cmd)
					continue
				}
				if !h.partial {
					for _, c := range cmds {
						c.SetErr(err)
					}
					return err
				}
				cmd.SetErr(err)
				failedBefore[i] = true
				if failed == nil {
					failed = err
				}
			}
			if len(send) == 0 {
				return failed
			}
		}
		err := next(ctx, send)
		if h.after != nil {
			for i, cmd := range cmds {
				if failedBefore[i] {
					continue
				}
				if lost := h.after(hcs[i], cmd.Err()); lost != nil {
					cmd.SetErr(lost)
					if err == nil {
						err = lost
					}
				}
			}
		}
		if err != nil {
			return err
		}
		return failed
	}
}

// blackhole is a cmdHook for a blackholed Redis: every command waits until
// its context ends.
func blackhole() *cmdHook {
	return &cmdHook{before: func(c hookCmd) error {
		<-c.ctx.Done()
		return c.ctx.Err()
	}}
}

var scriptNames = map[string]string{
	script.SHA.Acquire:    "acquire",
	script.SHA.Fill:       "fill",
	script.SHA.Set:        "set",
	script.SHA.Invalidate: "invalidate",
	script.SHA.Release:    "release",
}

// cmdName names a command: the library script it runs ("acquire", "fill",
// "set", "invalidate", "release"), or else its lower-case name ("getrange");
// key is its first key.
func cmdName(cmd redis.Cmder) (name, key string) {
	args := cmd.Args()
	name = strings.ToLower(cmd.Name())
	switch name {
	case "evalsha", "eval":
		if len(args) < 4 {
			return name, ""
		}
		id, _ := args[1].(string)
		if name == "eval" {
			sum := sha1.Sum([]byte(id))
			id = hex.EncodeToString(sum[:])
		}
		if s, ok := scriptNames[id]; ok {
			name = s
		}
		key, _ = args[3].(string)
	default:
		if len(args) >= 2 {
			key, _ = args[1].(string)
		}
	}
	return name, key
}

// watchCmd returns a channel that receives the key of every successful run
// of the named command or script on rdb. Call it before rdb is used.
func watchCmd(rdb *redis.Client, name string) <-chan string {
	ch := make(chan string, 64)
	rdb.AddHook(&cmdHook{after: func(c hookCmd, err error) error {
		if c.name == name && err == nil {
			select {
			case ch <- c.key:
			default:
			}
		}
		return nil
	}})
	return ch
}

func waitKey(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case k := <-ch:
		return k
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

// teeRecorder passes every event to each of its Recorders, the last one last:
// a test that waits on an event from an events Recorder puts it last, so
// that the others have seen the event when the wait ends.
type teeRecorder []Recorder

func (rt teeRecorder) Count(loader string, e Event) {
	for _, r := range rt {
		r.Count(loader, e)
	}
}

func (rt teeRecorder) ObserveLoad(loader string, d time.Duration, err error) {
	for _, r := range rt {
		r.ObserveLoad(loader, d, err)
	}
}

// loadsInFlight counts the loads in progress and the most ever seen at once.
type loadsInFlight struct{ now, max atomic.Int64 }

func (f *loadsInFlight) enter() {
	n := f.now.Add(1)
	for {
		m := f.max.Load()
		if n <= m || f.max.CompareAndSwap(m, n) {
			return
		}
	}
}

func (f *loadsInFlight) leave() { f.now.Add(-1) }

// arrivalCtx is a context that closes arrived on the nth call of its
// Done method: the library calls Done when a Get starts waiting (for a
// coalesced read, for a flight), so a test learns that the Get is parked
// without sleeping. Its parent is Background, whose Done is nil, so that
// context.WithTimeout calls Done once (and its cancel once more) and starts
// no goroutine.
type arrivalCtx struct {
	context.Context
	nth     int32
	calls   atomic.Int32
	arrived chan struct{}
}

func newArrivalCtx(nth int32) *arrivalCtx {
	return &arrivalCtx{Context: context.Background(), nth: nth, arrived: make(chan struct{})}
}

func (c *arrivalCtx) Done() <-chan struct{} {
	if c.calls.Add(1) == c.nth {
		close(c.arrived)
	}
	return c.Context.Done()
}

// seedRow stores r as key's entry with Set: unlike a Get that fills, it
// leaves no flight behind that a later Get could join.
func seedRow(t *testing.T, l *Loader[row], key string, r row) {
	t.Helper()
	require.NoError(t, l.Set(context.Background(), key, r))
}

func getRow(t *testing.T, l *Loader[row], key string) row {
	t.Helper()
	v, err := l.Get(context.Background(), key)
	require.NoError(t, err)
	return v
}

// concurrentGets runs n Gets of key at once and returns their values; it fails
// the test on any error.
func concurrentGets(t *testing.T, l *Loader[row], key string, n int) []row {
	t.Helper()
	type res struct {
		v   row
		err error
	}
	out := make(chan res, n)
	for range n {
		go func() {
			v, err := l.Get(context.Background(), key)
			out <- res{v, err}
		}()
	}
	vals := make([]row, 0, n)
	for range n {
		r := <-out
		require.NoError(t, r.err)
		vals = append(vals, r.v)
	}
	return vals
}

// recorderFunc is a Recorder that calls f for every event.
type recorderFunc func(Event)

func (f recorderFunc) Count(_ string, e Event)                  { f(e) }
func (f recorderFunc) ObserveLoad(string, time.Duration, error) {}

// nearExpiry makes key's entry still fresh but so close to its soft
// expiry, compared with a pretended last load time, that a hit refreshes
// it with probability 1 - 2e-7.
func nearExpiry(t *testing.T, l *Loader[row], key string) (soft int64) {
	t.Helper()
	soft = l.clock.serverNow() + 2000
	editEntry(t, l.rdb, l.Key(key), func(e *entry.Entry) { e.SoftExpiry, e.Delta = soft, 1e7 })
	return soft
}

// rawEntry returns key's raw value from mr, which may be closed.
func rawEntry(t *testing.T, mr *miniredis.Miniredis, key string) string {
	t.Helper()
	v, err := mr.DB(0).Get(key)
	require.NoError(t, err)
	return v
}

// fakeRedis returns an in-process Redis and a client of it.
func fakeRedis(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return mr, rdb
}

// newClient returns another client of addr, as another process would have.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// sumStats adds up the counters of several Loaders (processes).
func sumStats[T any](loaders []*Loader[T]) Stats {
	var s Stats
	for _, l := range loaders {
		s = s.combine(l.Stats(), 1)
	}
	return s
}

// minus returns the counters of s less those of b.
func (s Stats) minus(b Stats) Stats { return s.combine(b, -1) }

// combine adds sign × every uint64 counter of o to s's.
func (s Stats) combine(o Stats, sign int) Stats {
	sv, ov := reflect.ValueOf(&s).Elem(), reflect.ValueOf(o)
	for i := range sv.NumField() {
		if f := sv.Field(i); f.Kind() == reflect.Uint64 {
			if sign > 0 {
				f.SetUint(f.Uint() + ov.Field(i).Uint())
			} else {
				f.SetUint(f.Uint() - ov.Field(i).Uint())
			}
		}
	}
	return s
}
