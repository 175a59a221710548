// Package faultproxy is a TCP proxy for fault-injection tests: it forwards
// connections to a target and, on command, delays replies, swallows traffic
// (a blackhole: connections are accepted and never answered), resets
// connections, or refuses them.
package faultproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Mode is how the proxy treats traffic.
type Mode int

// Modes.
const (
	Pass      Mode = iota // forward everything
	Latency               // forward, delaying every reply chunk
	Blackhole             // accept, read and drop everything; answer nothing
	Reset                 // reset every connection, open or new
	Refuse                // stop listening: new connections are refused; open ones are reset
)

// Proxy forwards a loopback port to a target address.
type Proxy struct {
	target string
	addr   string

	mu      sync.Mutex // protects the fields below
	mode    Mode
	latency time.Duration
	ln      net.Listener // nil while refusing
	conns   map[net.Conn]struct{}
	closed  bool
	changed chan struct{} // closed and replaced at every mode change

	wg sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}, changed: make(chan struct{})}
	p.serve(ln)
	return p, nil
}

// Addr is the address clients should dial.
func (p *Proxy) Addr() string { return p.addr }

// Set switches the mode; latency applies to Latency.
func (p *Proxy) Set(mode Mode, latency time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("faultproxy: closed")
	}
	prev := p.mode
	p.mode, p.latency = mode, latency
	close(p.changed)
	p.changed = make(chan struct{})
	switch {
	case mode == Reset || mode == Refuse:
		for c := range p.conns {
			reset(c)
		}
		if mode == Refuse && p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
	case prev == Refuse:
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			return err
		}
		p.serveLocked(ln)
	}
	return nil
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serveLocked(ln)
}

func (p *Proxy) serveLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.handle(c)
		}
	}()
}

func (p *Proxy) state() (Mode, time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.latency, p.changed
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) handle(client net.Conn) {
	if !p.track(client) {
		client.Close()
		return
	}
	mode, _, _ := p.state()
	if mode == Reset {
		reset(client)
		p.untrack(client)
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.untrack(client)
		if mode == Blackhole {
			// Never dial: swallow what the client sends until the mode
			// changes or the client leaves; then drop the connection.
			p.pump(nil, client, false)
			return
		}
		server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			reset(client)
			return
		}
		if !p.track(server) {
			server.Close()
			return
		}
		defer p.untrack(server)
		done := make(chan struct{}, 2)
		go func() { p.pump(server, client, false); done <- struct{}{} }()
		go func() { p.pump(client, server, true); done <- struct{}{} }()
		<-done
		client.Close()
		server.Close()
		<-done
	}()
}

// pump copies src to dst (dst nil: discard) chunk by chunk, applying the
// mode current at each chunk: a blackhole drops it, latency delays it (on
// replies only).
func (p *Proxy) pump(dst, src net.Conn, reply bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			mode, lat, changed := p.state()
			switch {
			case mode == Blackhole || dst == nil:
				continue
			case mode == Latency && reply:
				select {
				case <-time.After(lat):
				case <-changed:
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && dst != nil {
				reset(dst)
			}
			return
		}
	}
}

// reset closes c with a TCP RST instead of a FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
