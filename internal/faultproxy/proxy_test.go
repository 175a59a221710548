package faultproxy_test

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/faultproxy"
)

// echo starts a line echo server.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestModes(t *testing.T) {
	p, err := faultproxy.Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, tc := range []struct {
		name    string
		mode    faultproxy.Mode
		latency time.Duration
		ok      bool
	}{
		{"pass", faultproxy.Pass, 0, true},
		{"latency below the timeout", faultproxy.Latency, 20 * time.Millisecond, true},
		{"latency above the timeout", faultproxy.Latency, time.Second, false},
		{"blackhole", faultproxy.Blackhole, 0, false},
		{"reset", faultproxy.Reset, 0, false},
		{"refuse", faultproxy.Refuse, 0, false},
		{"pass again", faultproxy.Pass, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Set(tc.mode, tc.latency); err != nil {
				t.Fatal(err)
			}
			got, err := roundTrip(p.Addr(), 200*time.Millisecond)
			if tc.ok && (err != nil || got != "ping\n") {
				t.Fatalf("got %q, %v; want the echo", got, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("got %q; want a failure", got)
			}
		})
	}
}
