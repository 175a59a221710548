package faultproxy

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"
)

// ReplyFaults are faults drawn at random for each reply of a Redis
// connection (see [Proxy.SetReplyFaults]). The zero value injects none.
//
// Each reply gets one uniform draw u in [0, 1): below Lose it is lost;
// else, if it is not the first reply of a pipeline, below Lose +
// PipelineReset the connection is reset there; else below Lose +
// PipelineReset + Delay it is delayed by a duration drawn uniformly from
// [DelayMin, DelayMax]. The probabilities must add up to at most 1.
type ReplyFaults struct {
	// Seed seeds the generator: the same seed gives the same sequence of
	// draws, so a sequential client sees the same faults at the same
	// replies. (With concurrent clients, which reply gets which draw
	// depends on their interleaving.)
	Seed uint64

	// Lose is the probability that a reply is lost: the command ran, the
	// connection is reset before its reply reaches the client.
	Lose float64

	// PipelineReset is the probability, for each reply after the first of
	// a pipeline (commands in flight together on one connection), that
	// the connection is reset before it: the client got some of the
	// pipeline's replies and none of the rest, though every command ran.
	PipelineReset float64

	// Delay is the probability that a reply is held back for a duration
	// in [DelayMin, DelayMax] (the connection's later replies wait too).
	Delay              float64
	DelayMin, DelayMax time.Duration

	// Commands, when not empty, limits the faults to the replies of these
	// commands (case-insensitive, e.g. "EVALSHA"); for a pipeline reset,
	// to the command whose reply is not delivered.
	Commands []string
}

// Stats counts a proxy's traffic and the reply faults it injected, over
// its lifetime. Only RESP connections count.
type Stats struct {
	Commands       uint64 // commands forwarded to the server
	Replies        uint64 // replies forwarded to clients (pushes excluded)
	LostReplies    uint64 // replies lost after their command ran (LoseNextReply, ReplyFaults.Lose)
	PipelineResets uint64 // connections reset in the middle of a pipeline
	DelayedReplies uint64 // replies held back
}

type counters struct {
	commands, replies, lost, pipelineResets, delayed atomic.Uint64
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Commands:       p.stats.commands.Load(),
		Replies:        p.stats.replies.Load(),
		LostReplies:    p.stats.lost.Load(),
		PipelineResets: p.stats.pipelineResets.Load(),
		DelayedReplies: p.stats.delayed.Load(),
	}
}

// actionKind is what happens to one reply.
type actionKind int

const (
	none          actionKind = iota
	delay                    // hold the reply back
	lose                     // reset before the reply
	pipelineReset            // reset before the reply, in the middle of a pipeline
)

type action struct {
	kind  actionKind
	delay time.Duration
}

// shot is a fault armed for one reply.
type shot struct {
	kind  actionKind
	cmd   string // upper case; "" any command
	after int    // pipelineReset: replies of the pipeline delivered first
	delay time.Duration
}

// replyFaults is the proxy's per-reply fault state, guarded by Proxy.mu.
type replyFaults struct {
	shots  []shot // armed, applied in order to the first reply each matches
	random ReplyFaults
	cmds   map[string]bool // random.Commands, upper case; nil: all
	rng    *rand.Rand      // nil: no random faults
}

// LoseNextReply arms one lost reply: the next reply to command (say
// "INCR" or "EVALSHA"; "" for any command), on any connection, does not
// reach its client. The command has run on Redis; the proxy resets the
// client's connection instead of delivering its reply.
func (p *Proxy) LoseNextReply(command string) {
	p.arm(shot{kind: lose, cmd: strings.ToUpper(command)})
}

// ResetInPipeline arms one reset in the middle of a pipeline: the next
// pipeline (commands in flight together on one connection) that has n
// replies delivered (n ≥ 1) has its connection reset before its next
// reply, though all its commands reached Redis.
func (p *Proxy) ResetInPipeline(n int) {
	p.arm(shot{kind: pipelineReset, after: max(n, 1)})
}

// DelayNextReply arms one delayed reply: the next reply to command (""
// for any) is held back d before it is delivered.
func (p *Proxy) DelayNextReply(command string, d time.Duration) {
	p.arm(shot{kind: delay, cmd: strings.ToUpper(command), delay: d})
}

// DelayNextRequest arms one delayed request: the next command named
// command ("" for any), on any connection, reaches Redis d late (with the
// bytes that came with it), as a request that sat in a socket or a queue
// would: its client may have given up on it by the time it runs.
func (p *Proxy) DelayNextRequest(command string, d time.Duration) {
	p.mu.Lock()
	p.requestDelay = &requestShot{cmd: strings.ToUpper(command), delay: d}
	p.mu.Unlock()
}

// requestShot is an armed DelayNextRequest.
type requestShot struct {
	cmd   string
	delay time.Duration
}

// requestDelayFor takes the armed request delay if it matches cmd.
func (p *Proxy) requestDelayFor(cmd string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.requestDelay
	if s == nil || s.cmd != "" && s.cmd != cmd {
		return 0
	}
	p.requestDelay = nil
	return s.delay
}

func (p *Proxy) arm(s shot) {
	p.mu.Lock()
	p.faults.shots = append(p.faults.shots, s)
	p.mu.Unlock()
}

// Disarm drops every armed one-shot fault and the random ones.
func (p *Proxy) Disarm() {
	p.mu.Lock()
	p.faults = replyFaults{}
	p.requestDelay = nil
	p.mu.Unlock()
}

// SetReplyFaults replaces the random per-reply faults (the zero value
// stops them). Armed one-shot faults are kept and take precedence.
func (p *Proxy) SetReplyFaults(f ReplyFaults) error {
	if f.Lose < 0 || f.PipelineReset < 0 || f.Delay < 0 || f.Lose+f.PipelineReset+f.Delay > 1 {
		return errors.New("faultproxy: reply fault probabilities must be ≥ 0 and add up to at most 1")
	}
	if f.DelayMin < 0 || f.DelayMax < f.DelayMin {
		return errors.New("faultproxy: want 0 ≤ DelayMin ≤ DelayMax")
	}
	var cmds map[string]bool
	if len(f.Commands) > 0 {
		cmds = make(map[string]bool, len(f.Commands))
		for _, c := range f.Commands {
			cmds[strings.ToUpper(c)] = true
		}
	}
	f.Commands = append([]string(nil), f.Commands...)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults.random, p.faults.cmds, p.faults.rng = f, cmds, nil
	if f.Lose+f.PipelineReset+f.Delay > 0 {
		p.faults.rng = rand.New(rand.NewPCG(f.Seed, f.Seed^0x9e3779b97f4a7c15))
	}
	return nil
}

// draw decides the fate of a reply to cmd that has inPipeline replies of
// its pipeline delivered before it.
func (p *Proxy) draw(cmd string, inPipeline int) action {
	p.mu.Lock()
	defer p.mu.Unlock()
	rf := &p.faults
	for i, s := range rf.shots {
		var hit bool
		switch s.kind {
		case pipelineReset:
			hit = inPipeline == s.after
		default:
			hit = s.cmd == "" || s.cmd == cmd
		}
		if hit {
			rf.shots = append(rf.shots[:i:i], rf.shots[i+1:]...)
			return action{kind: s.kind, delay: s.delay}
		}
	}
	if rf.rng == nil || (rf.cmds != nil && !rf.cmds[cmd]) {
		return action{}
	}
	f := &rf.random
	u := rf.rng.Float64()
	switch {
	case u < f.Lose:
		return action{kind: lose}
	case inPipeline > 0 && u < f.Lose+f.PipelineReset:
		return action{kind: pipelineReset}
	case u >= f.Lose+f.PipelineReset && u < f.Lose+f.PipelineReset+f.Delay:
		d := f.DelayMin
		if span := f.DelayMax - f.DelayMin; span > 0 {
			d += time.Duration(rf.rng.Int64N(int64(span) + 1))
		}
		return action{kind: delay, delay: d}
	}
	return action{}
}
