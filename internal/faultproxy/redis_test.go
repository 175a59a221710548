package faultproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/faultproxy"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// redisProxy starts a proxy in front of the real Redis and returns it with
// a key prefix of the test's own (keys deleted at the end).
func redisProxy(t *testing.T) (*faultproxy.Proxy, *redis.Client, string) {
	t.Helper()
	direct := testenv.Redis(t, "")
	prefix := testenv.Prefix(t, direct, "faultproxytest:")
	p, err := faultproxy.Start(testenv.RedisAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, direct, prefix
}

// client returns a go-redis client through p with the given retries (-1:
// none), RESP protocol (2 or 3) and one connection.
func client(t *testing.T, p *faultproxy.Proxy, retries, protocol int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr: p.Addr(), MaxRetries: retries, Protocol: protocol, PoolSize: 1,
		ContextTimeoutEnabled: true, MinRetryBackoff: time.Millisecond, MaxRetryBackoff: 2 * time.Millisecond,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func get(t *testing.T, rdb *redis.Client, key string) int {
	t.Helper()
	s, err := rdb.Get(context.Background(), key).Result()
	if err == redis.Nil {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(s)
	return n
}

// A lost reply: the command ran on Redis, the client saw its connection
// reset. A client without retries reports the error although the INCR
// happened; go-redis with its default retries sends it again and the
// INCR runs twice: the phenomenon every script must survive.
func TestLoseNextReply(t *testing.T) {
	ctx := context.Background()
	for _, protocol := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(protocol), func(t *testing.T) {
			p, direct, prefix := redisProxy(t)
			key := prefix + "n"

			noRetry := client(t, p, -1, protocol)
			if err := noRetry.Ping(ctx).Err(); err != nil { // connect (HELLO) before arming
				t.Fatal(err)
			}
			p.LoseNextReply("incr")
			if err := noRetry.Incr(ctx, key).Err(); err == nil {
				t.Fatal("INCR succeeded; want the reset connection's error")
			}
			if got := get(t, direct, key); got != 1 {
				t.Fatalf("after a lost reply the counter is %d; want 1 (the INCR ran)", got)
			}

			retrying := client(t, p, 3, protocol)
			if err := retrying.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			p.LoseNextReply("INCR")
			n, err := retrying.Incr(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n != 3 || get(t, direct, key) != 3 {
				t.Fatalf("retried INCR answered %d, counter %d; want 3 and 3 (it ran twice)", n, get(t, direct, key))
			}
			if s := p.Stats(); s.LostReplies != 2 {
				t.Fatalf("stats %+v; want 2 lost replies", s)
			}

			// The filter: a PING's reply is not an INCR's.
			p.LoseNextReply("incr")
			if err := noRetry.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING hit by a fault armed for INCR: %v", err)
			}
			p.Disarm()
			if err := noRetry.Incr(ctx, key).Err(); err != nil {
				t.Fatalf("INCR after Disarm: %v", err)
			}
		})
	}
}

// A script's reply lost: EVALSHA ran, go-redis ran it again.
func TestLoseScriptReply(t *testing.T) {
	ctx := context.Background()
	p, direct, prefix := redisProxy(t)
	key := prefix + "s"
	rdb := client(t, p, 3, 3)
	s := redis.NewScript(`return redis.call("INCR", KEYS[1])`)
	if err := s.Load(ctx, rdb).Err(); err != nil {
		t.Fatal(err)
	}
	p.LoseNextReply("evalsha")
	n, err := s.Run(ctx, rdb, []string{key}).Int()
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || get(t, direct, key) != 2 {
		t.Fatalf("script answered %d, counter %d; want 2, 2", n, get(t, direct, key))
	}
}

// A reset in the middle of a pipeline: the client got n replies, not the
// rest, and every command ran.
func TestResetInPipeline(t *testing.T) {
	ctx := context.Background()
	p, direct, prefix := redisProxy(t)
	const cmds, delivered = 10, 3

	t.Run("raw", func(t *testing.T) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		p.ResetInPipeline(delivered)
		var req []byte
		for i := range cmds {
			k := fmt.Sprintf("%sraw%d", prefix, i)
			req = fmt.Appendf(req, "*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n", len(k), k)
		}
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		got := 0
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			if line != ":1\r\n" {
				t.Fatalf("reply %q", line)
			}
			got++
		}
		if got != delivered {
			t.Fatalf("%d replies delivered; want %d", got, delivered)
		}
		// Redis ran the whole pipeline: it read it in one go before it
		// answered the first command.
		for i := range cmds {
			if n := get(t, direct, fmt.Sprintf("%sraw%d", prefix, i)); n != 1 {
				t.Fatalf("key %d is %d; want 1", i, n)
			}
		}
	})

	t.Run("go-redis retries the pipeline", func(t *testing.T) {
		rdb := client(t, p, 3, 3)
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		p.ResetInPipeline(delivered)
		pipe := rdb.Pipeline()
		for i := range cmds {
			pipe.Incr(ctx, fmt.Sprintf("%sgr%d", prefix, i))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		// go-redis sends the whole pipeline again: the commands whose
		// replies it had run twice too (measured here: all of them).
		twice := 0
		for i := range cmds {
			switch n := get(t, direct, fmt.Sprintf("%sgr%d", prefix, i)); n {
			case 2:
				twice++
			case 1:
			default:
				t.Fatalf("key %d is %d; want 1 or 2", i, n)
			}
		}
		if twice < cmds-delivered {
			t.Fatalf("%d commands ran twice; want at least the %d whose replies were lost", twice, cmds-delivered)
		}
		t.Logf("retried pipeline of %d after %d replies: %d commands ran twice", cmds, delivered, twice)
	})
	if s := p.Stats(); s.PipelineResets != 2 {
		t.Fatalf("stats %+v; want 2 pipeline resets", s)
	}
}

// A delayed reply arrives, late; the next one is not held.
func TestDelayNextReply(t *testing.T) {
	ctx := context.Background()
	p, _, _ := redisProxy(t)
	rdb := client(t, p, -1, 3)
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	const d = 150 * time.Millisecond
	p.DelayNextReply("ping", d)
	start := time.Now()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < d {
		t.Fatalf("delayed PING took %v; want at least %v", took, d)
	}
	// A delay beyond the caller's deadline is a timeout, not a lost reply.
	p.DelayNextReply("ping", time.Second)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := rdb.Ping(short).Err(); err == nil {
		t.Fatal("PING within 50ms despite a 1s delay")
	}
	if s := p.Stats(); s.DelayedReplies != 2 || s.LostReplies != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// Random reply faults from a seed: a sequential client sees the same
// faults at the same commands in two runs with the same seed, another seed
// gives others, and every kind is injected.
func TestSeededReplyFaults(t *testing.T) {
	ctx := context.Background()
	run := func(seed uint64) (string, faultproxy.Stats) {
		p, _, prefix := redisProxy(t)
		err := p.SetReplyFaults(faultproxy.ReplyFaults{
			Seed: seed, Lose: 0.1, PipelineReset: 0.1, Delay: 0.1,
			DelayMin: time.Millisecond, DelayMax: 3 * time.Millisecond,
			Commands: []string{"INCR"},
		})
		if err != nil {
			t.Fatal(err)
		}
		rdb := client(t, p, -1, 3)
		var trace []byte
		for i := range 60 {
			if i%3 == 2 { // a pipeline now and then: room for a pipeline reset
				pipe := rdb.Pipeline()
				for j := range 4 {
					pipe.Incr(ctx, fmt.Sprintf("%sp%d.%d", prefix, i, j))
				}
				_, err := pipe.Exec(ctx)
				trace = append(trace, "P."[b2i(err == nil)])
				continue
			}
			err := rdb.Incr(ctx, prefix+"k").Err()
			trace = append(trace, "x."[b2i(err == nil)])
		}
		return string(trace), p.Stats()
	}
	a, sa := run(7)
	b, sb := run(7)
	c, _ := run(8)
	t.Logf("seed 7: %s %+v", a, sa)
	t.Logf("seed 8: %s", c)
	if a != b {
		t.Fatalf("same seed, different faults:\n%s\n%s", a, b)
	}
	if a == c {
		t.Fatalf("seeds 7 and 8 gave the same faults: %s", a)
	}
	if sa != sb {
		t.Fatalf("same seed, different stats: %+v, %+v", sa, sb)
	}
	if sa.LostReplies == 0 || sa.PipelineResets == 0 || sa.DelayedReplies == 0 {
		t.Fatalf("a kind never injected in 60 rounds: %+v", sa)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A connection that is not RESP (an echo of text lines; MySQL in the other
// packages) passes untouched with reply faults armed.
func TestNonRESPUntouched(t *testing.T) {
	p, err := faultproxy.Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.LoseNextReply("")
	if err := p.SetReplyFaults(faultproxy.ReplyFaults{Lose: 1}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got, err := roundTrip(p.Addr(), 2*time.Second); err != nil || got != "ping\n" {
			t.Fatalf("got %q, %v; want the echo", got, err)
		}
	}
	if s := p.Stats(); s.LostReplies != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSetReplyFaultsValidates(t *testing.T) {
	p, err := faultproxy.Start("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, f := range []faultproxy.ReplyFaults{
		{Lose: -0.1}, {Lose: 0.6, Delay: 0.6}, {Delay: 0.1, DelayMin: time.Second, DelayMax: time.Millisecond},
	} {
		if err := p.SetReplyFaults(f); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}

// RESP3 pushes are no command's reply: a client-tracking invalidation
// arriving among a pipeline's replies does not shift which reply a fault
// armed for a command hits.
