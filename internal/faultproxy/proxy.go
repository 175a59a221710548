// Package faultproxy is a TCP proxy for fault-injection tests: it forwards
// connections to a target and, on command, delays replies, swallows traffic
// (a blackhole: connections are accepted and never answered), resets
// connections, or refuses them.
//
// Those modes ([Proxy.Set]) act on bytes and work for any protocol (the
// MySQL tests use them too). On Redis connections the proxy also reads the
// RESP framing (RESP2 and RESP3) of both directions, so it can hit one
// reply at a time:
//
//   - a lost reply: the command reached Redis and ran, then the connection
//     is reset before its reply reaches the client ([Proxy.LoseNextReply]).
//     A go-redis client with MaxRetries > 0 sends the command again: a
//     script or an INCR runs twice;
//   - a reset in the middle of a pipeline, after n of its replies were
//     delivered ([Proxy.ResetInPipeline]); every command of the pipeline
//     had reached Redis;
//   - a delayed reply ([Proxy.DelayNextReply]): the connection's later
//     replies wait behind it, as they would behind a slow one;
//   - a delayed request ([Proxy.DelayNextRequest]): the command reaches
//     Redis late, possibly after its client gave up and sent others on
//     other connections, which then run first.
//
// [Proxy.SetReplyFaults] draws the same faults at random for every reply,
// from a seeded generator, for randomized fault campaigns; [Proxy.Stats]
// counts what was injected. A connection whose bytes are not RESP is
// forwarded untouched and never hit by reply faults.
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
	faults  replyFaults   // per-reply faults: armed shots and random draws
	// requestDelay is an armed DelayNextRequest, nil when none.
	requestDelay *requestShot

	stats counters

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
			swallow(client)
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
		l := &link{}
		done := make(chan struct{}, 2)
		go func() { p.pumpRequests(server, client, l); done <- struct{}{} }()
		go func() { p.pumpReplies(client, server, l); done <- struct{}{} }()
		<-done
		client.Close()
		server.Close()
		<-done
	}()
}

// swallow reads and drops what the client of a blackholed connection
// sends until the client leaves or the proxy closes.
func swallow(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// link is what the two directions of one proxied connection share: the
// commands sent and not yet answered, so that each reply is matched with
// its command and its place in a pipeline.
type link struct {
	mu      sync.Mutex // protects pending and opaque
	pending []string   // names of the commands sent and not yet answered, oldest first
	opaque  bool       // the requests are not RESP: no reply faults
}

func (l *link) sent(name string) {
	l.mu.Lock()
	l.pending = append(l.pending, name)
	l.mu.Unlock()
}

// next returns the command the next reply answers ("" if unknown) and
// whether reply faults apply to the connection.
func (l *link) next() (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opaque {
		return "", false
	}
	if len(l.pending) == 0 {
		return "", true // a RESP2 pub/sub message, or a multi-reply command
	}
	return l.pending[0], true
}

// answered pops the command a reply answered; it reports whether more
// commands are in flight (the reply was not the pipeline's last).
func (l *link) answered() (more bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) > 0 {
		l.pending = l.pending[1:]
	}
	return len(l.pending) > 0
}

func (l *link) setOpaque() {
	l.mu.Lock()
	l.opaque = true
	l.mu.Unlock()
}

// pumpRequests copies the client's bytes to the server chunk by chunk,
// noting each complete command before forwarding it (so its reply, which
// cannot come earlier, finds it). A blackhole drops the chunk.
func (p *Proxy) pumpRequests(server, client net.Conn, l *link) {
	buf := make([]byte, 32<<10)
	fr := framer{requests: true}
	var evs []event
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if mode, _, _ := p.state(); mode == Blackhole {
				continue
			}
			if !fr.broken {
				evs = fr.feed(buf[:n], evs[:0])
				var hold time.Duration
				for _, ev := range evs {
					if !ev.start && !ev.empty {
						l.sent(ev.name)
						p.stats.commands.Add(1)
						if hold == 0 {
							hold = p.requestDelayFor(ev.name)
						}
					}
				}
				if hold > 0 && !p.sleep(hold) {
					return
				}
				if fr.broken {
					l.setOpaque()
				}
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				reset(server)
			}
			return
		}
	}
}

// pumpReplies copies the server's bytes to the client chunk by chunk,
// applying the mode current at each chunk (a blackhole drops it, latency
// delays it) and, at the start of each reply, the reply fault drawn for
// it: a delay, or a reset of both connections before the reply's first
// byte.
func (p *Proxy) pumpReplies(client, server net.Conn, l *link) {
	buf := make([]byte, 32<<10)
	var fr framer
	var evs []event
	inPipeline := 0 // replies delivered of the commands in flight together
	push := false   // the message being read is a RESP3 push
	for {
		n, err := server.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if !fr.broken {
				evs = fr.feed(chunk, evs[:0])
			} else {
				evs = evs[:0]
			}
			mode, lat, changed := p.state()
			switch mode {
			case Blackhole:
				// Dropped, but still answers to their commands: the
				// replies after the blackhole match theirs.
				for _, ev := range evs {
					switch {
					case ev.start:
						push = ev.push
					case !push:
						l.answered()
					default:
						push = false
					}
				}
				continue
			case Latency:
				select {
				case <-time.After(lat):
				case <-changed:
				}
			}
			from := 0
			for _, ev := range evs {
				if !ev.start {
					if !push {
						if l.answered() {
							inPipeline++
						} else {
							inPipeline = 0
						}
						p.stats.replies.Add(1)
					}
					push = false
					continue
				}
				if push = ev.push; push {
					continue
				}
				cmd, ok := l.next()
				if !ok {
					continue
				}
				act := p.draw(cmd, inPipeline)
				if act.kind == none {
					continue
				}
				if _, werr := client.Write(chunk[from:ev.off]); werr != nil {
					return
				}
				from = ev.off
				if act.kind == delay {
					p.stats.delayed.Add(1)
					if !p.sleep(act.delay) {
						return
					}
					continue
				}
				// Lost: the command ran (Redis answers only after running
				// it); the client sees its connection reset instead.
				if act.kind == lose {
					p.stats.lost.Add(1)
				} else {
					p.stats.pipelineResets.Add(1)
				}
				reset(client)
				server.Close()
				return
			}
			if _, werr := client.Write(chunk[from:]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				reset(client)
			}
			return
		}
	}
}

// sleep waits d, or less if the mode changes; false: the proxy closed.
func (p *Proxy) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		p.mu.Lock()
		closed, changed := p.closed, p.changed
		p.mu.Unlock()
		if closed {
			return false
		}
		select {
		case <-t.C:
			return true
		case <-changed:
			// A mode change ends the wait only if it was Close; other
			// changes (say, back to Pass) leave a drawn delay in place.
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
