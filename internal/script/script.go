// Package script holds the Lua scripts that change cache entries and, next
// to each, the one Go description of it: the Call that builds its
// arguments and the function that parses its reply. Each script touches
// exactly one key, so every script works unchanged on Redis Cluster. Each
// is safe to run twice with the same arguments — go-redis retries a
// command whose reply was lost — and then answers what it answered the
// first time (see the scripts' headers).
//
// The entry format (internal/entry) is described once, in entry.lua, which
// is prepended to every script.
package script

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
)

var (
	//go:embed entry.lua
	entrySrc string
	//go:embed acquire.lua
	acquireSrc string
	//go:embed fill.lua
	fillSrc string
	//go:embed set.lua
	setSrc string
	//go:embed invalidate.lua
	invalidateSrc string
	//go:embed release.lua
	releaseSrc string
	//go:embed evict.lua
	evictSrc string
)

// The scripts, wrapped once, each with the entry format before it.
var (
	acquire    = redis.NewScript(entrySrc + acquireSrc)
	fill       = redis.NewScript(entrySrc + fillSrc)
	set        = redis.NewScript(entrySrc + setSrc)
	invalidate = redis.NewScript(entrySrc + invalidateSrc)
	release    = redis.NewScript(entrySrc + releaseSrc)
	evict      = redis.NewScript(entrySrc + evictSrc)
)

// SHA holds each script's SHA1, for tests and tools that watch the
// commands sent (EVALSHA names the script by it).
var SHA = struct{ Acquire, Fill, Set, Invalidate, Release, Evict string }{
	acquire.Hash(), fill.Hash(), set.Hash(), invalidate.Hash(), release.Hash(), evict.Hash(),
}

// Names maps each script's SHA1 to its name.
var Names = map[string]string{
	acquire.Hash():    "acquire",
	fill.Hash():       "fill",
	set.Hash():        "set",
	invalidate.Hash(): "invalidate",
	release.Hash():    "release",
	evict.Hash():      "evict",
}

// Call is one run of a one-key script.
type Call struct {
	script *redis.Script
	Key    string
	args   []any
}

// Run runs c by hash, falling back to its source when the server does not
// have the script yet.
func (c Call) Run(ctx context.Context, rdb redis.Scripter) *redis.Cmd {
	return c.script.Run(ctx, rdb, []string{c.Key}, c.args...)
}

// Name is the script's name.
func (c Call) Name() string { return Names[c.script.Hash()] }

// Pipeline sends calls in one pipeline by hash, then again by source
// those that found their script missing (NOSCRIPT). Only those are sent
// again: the others ran. It returns each call's command and the first
// error.
func Pipeline(ctx context.Context, rdb redis.Cmdable, calls []Call) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	pipe := rdb.Pipeline()
	for i, c := range calls {
		cmds[i] = c.script.EvalSha(ctx, pipe, []string{c.Key}, c.args...)
	}
	_, err := pipe.Exec(ctx)
	if err == nil {
		return cmds, nil
	}
	var again []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return cmds, err
	}
	pipe = rdb.Pipeline()
	for _, i := range again {
		c := calls[i]
		cmds[i] = c.script.Eval(ctx, pipe, []string{c.Key}, c.args...)
	}
	_, _ = pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return cmds, err
		}
	}
	return cmds, nil
}

// Mode is how acquire decides whether to grant a lease.
type Mode string

// Acquire modes.
const (
	ModeMiss    Mode = "0" // grant unless the entry is usable and fresh
	ModeReplace Mode = "1" // the stored payload is corrupt: grant even if usable
	ModeRefresh Mode = "2" // early refresh: grant unless leased or refilled since read
)

// Acquire statuses.
const (
	Granted = 0
	Usable  = 1
	Held    = 2
	Late    = 3 // the request ran after its notAfter: nothing was granted, nor ever will be
)

// Acquire asks for the fill lease on key for token; soft is the soft
// expiry the caller read (checked in ModeRefresh). notAfter (server ms; 0:
// none) is when the caller stops waiting for the reply: a request that
// runs later grants nothing (status Late), so that a request delayed past
// its caller's timeout cannot leave a lease that no one fills.
func Acquire(key, token string, lease time.Duration, mode Mode, soft, notAfter int64) Call {
	return Call{acquire, key, []any{token, ms(lease), string(mode), soft, notAfter}}
}

// AcquireReply is acquire's reply.
type AcquireReply struct {
	Status    int64
	Gen       int64
	Payload   string // with Usable in ModeMiss
	Flags     int64
	Remaining time.Duration // of the lease
	Delta     time.Duration // of the last load
	Owner     string        // the lease holder, when Held
	Soft      int64         // soft expiry, server ms
	Now       int64         // server clock, ms
}

// ParseAcquire decodes acquire's reply.
func ParseAcquire(cmd *redis.Cmd) (AcquireReply, error) {
	vals, err := cmd.Slice()
	if err != nil {
		return AcquireReply{}, err
	}
	if len(vals) != 9 {
		return AcquireReply{}, fmt.Errorf("cache: acquire replied %d values", len(vals))
	}
	var a AcquireReply
	var rem, delta int64
	ints := [...]*int64{0: &a.Status, 1: &a.Gen, 3: &a.Flags, 4: &rem, 5: &delta, 7: &a.Soft, 8: &a.Now}
	for i, p := range ints {
		if p == nil {
			continue
		}
		n, ok := vals[i].(int64)
		if !ok {
			return AcquireReply{}, fmt.Errorf("cache: acquire reply %d is %T", i, vals[i])
		}
		*p = n
	}
	a.Payload, _ = vals[2].(string)
	a.Owner, _ = vals[6].(string)
	a.Remaining = time.Duration(rem) * time.Millisecond
	a.Delta = time.Duration(delta) * time.Millisecond
	return a, nil
}

// Store results: the replies of fill (all three) and set (Stored or
// Refused).
const (
	Stored     = 1
	LeaseLost  = 0 // fill: the lease is no longer ours
	Refused    = 0 // set: refused and invalidated instead
	OlderValue = -1
)

// Fill is what a fill stores.
type Fill struct {
	Token    string
	Payload  []byte
	Version  int64
	Negative bool
	KeyTTL   time.Duration // the key's life: the value's TTL plus how long it may be served stale
	SoftTTL  time.Duration // the value's TTL (0: no soft expiry)
	Delta    time.Duration // how long the load took
	Channel  string        // wakes waiters on the lease ("": none)
}

// FillCall stores f at key if f.Token still holds its lease.
func FillCall(key string, f Fill) Call {
	neg := "0"
	if f.Negative {
		neg = "1"
	}
	return Call{fill, key, []any{f.Token, f.Payload, Version(f.Version), neg, ms(f.KeyTTL), ms(f.Delta), softMS(f.SoftTTL), f.Channel}}
}

// Release gives up token's lease on key without filling.
func Release(key, token, channel string) Call {
	return Call{release, key, []any{token, channel}}
}

// AnyGeneration lets a set store whatever invalidations happened before.
const AnyGeneration = ""

// Set is what a set stores.
type Set struct {
	Payload   []byte
	Version   int64
	KeyTTL    time.Duration
	SoftTTL   time.Duration // 0: no soft expiry
	Tombstone time.Duration // the life of the tombstone a refused set leaves
	// Generation is the entry's generation read before the write began
	// ("0": absent; AnyGeneration: any).
	Generation string
	Token      string
}

// SetCall stores s at key (see set.lua).
func SetCall(key string, s Set) Call {
	return Call{set, key, []any{s.Payload, Version(s.Version), ms(s.KeyTTL), softMS(s.SoftTTL), ms(s.Tombstone), s.Generation, s.Token}}
}

// Invalidate turns key's entry into a tombstone living tomb, keeping its
// payload for stale serving when keep is set, with version floor floor (0:
// none).
func Invalidate(key string, tomb time.Duration, keep bool, floor int64) Call {
	k := "0"
	if keep {
		k = "1"
	}
	return Call{invalidate, key, []any{ms(tomb), k, Version(floor)}}
}

// Evict tombstones key's entry if it still has generation gen and payload
// (or is still the negative entry read, when negative).
func Evict(key string, gen int64, payload string, negative bool, tomb time.Duration, token string) Call {
	neg := "0"
	if negative {
		neg = "1"
	}
	return Call{evict, key, []any{strconv.FormatInt(gen, 10), payload, ms(tomb), neg, token}}
}

// Version formats a version as the entry stores it: 19 digits.
func Version(v int64) string {
	var b [19]byte
	s := strconv.AppendInt(b[:0], v, 10)
	if len(s) == len(b) {
		return string(s)
	}
	out := make([]byte, len(b))
	n := copy(out[len(b)-len(s):], s)
	for i := range len(b) - n {
		out[i] = '0'
	}
	return string(out)
}

// NewToken returns a random lease token, unique across processes, that
// names its holder (pid@host) for operators; at most entry.TokenSize bytes.
func NewToken() string {
	var b [entry.TokenSize]byte
	out := strconv.AppendUint(b[:0], rand.Uint64(), 36)
	out = append(out, holder...)
	if len(out) > entry.TokenSize {
		out = out[:entry.TokenSize]
	}
	return string(out)
}

// holder is "/pid@host", the part of every token that names this process.
var holder = func() string {
	host, _ := os.Hostname()
	return "/" + strconv.Itoa(os.Getpid()) + "@" + host
}()

// ms is d in whole milliseconds, rounded up.
func ms(d time.Duration) int64 { return int64((d + time.Millisecond - 1) / time.Millisecond) }

// softMS is ms for a soft TTL, where 0 means none.
func softMS(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return ms(d)
}
