package faultproxy

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// pushProxy starts a proxy in front of the real Redis (CACHE_REDIS_ADDR,
// default 127.0.0.1:6379), for the one test that needs the framer and so
// runs inside the package (internal/testenv imports this package). It
// fails under CI when Redis is unreachable, and skips otherwise.
func pushProxy(t *testing.T) (*Proxy, string) {
	t.Helper()
	addr := os.Getenv("CACHE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("CACHE_REQUIRE_SERVERS") == "1" {
			t.Fatalf("redis at %s unreachable (required under CI): %v", addr, err)
		}
		t.Skipf("redis at %s unreachable: %v", addr, err)
	}
	c.Close()
	p, err := Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	prefix := fmt.Sprintf("faultproxytest:%d:", time.Now().UnixNano())
	t.Cleanup(func() { // the one key the test writes
		if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			key := prefix + "tracked"
			fmt.Fprintf(c, "*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n", len(key), key)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			c.Read(make([]byte, 64))
			c.Close()
		}
	})
	return p, prefix
}

func TestPushesAreNotReplies(t *testing.T) {
	p, prefix := pushProxy(t)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// read returns the next top-level messages, as the framer cuts them.
	var fr framer
	var pending []byte
	buf := make([]byte, 4096)
	read := func() (string, error) {
		for {
			// Feed what is buffered one byte at a time until a message ends.
			for i := 0; i < len(pending); i++ {
				for _, ev := range fr.feed(pending[i:i+1], nil) {
					if !ev.start {
						msg := string(pending[:i+1])
						pending = pending[i+1:]
						return msg, nil
					}
				}
			}
			// Nothing complete: what was fed is part of the next message.
			fr = framer{}
			n, err := c.Read(buf)
			if err != nil {
				return "", err
			}
			pending = append(pending, buf[:n]...)
		}
	}
	send := func(cmds ...string) {
		t.Helper()
		var b []byte
		for _, cmd := range cmds {
			f := strings.Fields(cmd)
			b = fmt.Appendf(b, "*%d\r\n", len(f))
			for _, a := range f {
				b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
			}
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	key := prefix + "tracked"
	send("HELLO 3", "CLIENT TRACKING ON", "GET "+key)
	for _, want := range []string{"%", "+OK", "_"} {
		m, err := read()
		if err != nil || !strings.HasPrefix(m, want) {
			t.Fatalf("setup reply %q, %v; want %s…", m, err, want)
		}
	}
	// SET invalidates the key this connection tracks: a push comes among
	// the replies of the pipeline SET, ECHO.
	p.LoseNextReply("echo")
	send("SET "+key+" v", "ECHO lost")
	var got []string
	for {
		m, err := read()
		if err != nil {
			break
		}
		got = append(got, m)
	}
	var sawOK, sawPush bool
	for _, m := range got {
		switch {
		case m == "+OK\r\n":
			sawOK = true
		case strings.HasPrefix(m, ">2\r\n$10\r\ninvalidate"):
			sawPush = true
		case strings.Contains(m, "lost"):
			t.Fatalf("the ECHO reply was delivered: %q", got)
		}
	}
	if !sawOK || !sawPush {
		t.Fatalf("want SET's +OK and the invalidation push before the reset, got %q", got)
	}
	if s := p.Stats(); s.LostReplies != 1 {
		t.Fatalf("stats %+v", s)
	}
}
