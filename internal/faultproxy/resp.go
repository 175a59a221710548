package faultproxy

import (
	"bytes"
	"strconv"
)

// framer finds the message boundaries in a RESP2 or RESP3 byte stream fed
// to it chunk by chunk: where each top-level message (a command on the
// request side, a reply or a push on the reply side) starts and ends. It
// reads only the framing — type bytes, lengths, counts, CRLFs — and never
// holds more than a header line, so a multi-megabyte value costs nothing.
//
// RESP3 attributes (|) are part of the reply they precede, not a message of
// their own. Streamed strings and aggregates ($?, *?) are not supported:
// Redis does not send them. On anything that is not RESP the framer
// breaks: it reports no more events, and the proxy treats the connection as
// opaque bytes (a MySQL connection through the same proxy stays intact).
type framer struct {
	// requests: a line that does not start with a RESP type byte is an
	// inline command ("PING\r\n"), as Redis accepts from clients.
	requests bool
	broken   bool

	st     int    // what the next byte belongs to: stHead, stLine, stInline, stBody
	typ    byte   // type byte of the value being read
	line   []byte // the header line read so far (bounded: maxLine)
	body   int    // bytes left of a bulk body, its CRLF included
	stack  []frame
	inAttr bool // a top-level attribute was read: the reply it decorates follows

	// Requests: the command name (first element of a top-level array, or
	// the first word of an inline command), bounded to maxName bytes.
	name    []byte
	capture bool // the bulk body being read is the command name
}

// frame is an aggregate being read: left elements to go out of n.
type frame struct {
	n, left int
	attr    bool // an attribute: not an element of its parent when done
}

const (
	stHead   = iota // a type byte
	stLine          // the rest of a header or simple-value line
	stInline        // an inline command, up to '\n'
	stBody          // the body of a bulk value
)

// Bounds: a header line is a type's number; a command name is short.
const (
	maxLine = 64
	maxName = 32
	// maxCount bounds an aggregate's element count and a bulk's length:
	// anything larger is not a real Redis message.
	maxCount = 1 << 32
)

// event is a top-level message boundary at offset off of the chunk fed.
type event struct {
	off   int
	start bool   // a message starts at off; else one ended just before off
	push  bool   // start of a RESP3 push (out of band: no command's reply)
	name  string // end of a request: the command's name, upper case
	empty bool   // end of an inline line with nothing on it (Redis ignores it)
}

// feed consumes b and appends the boundaries found in it to evs.
func (f *framer) feed(b []byte, evs []event) []event {
	for i := 0; i < len(b) && !f.broken; {
		switch f.st {
		case stHead:
			c := b[i]
			top := len(f.stack) == 0
			if top && !f.inAttr {
				f.name = f.name[:0]
			}
			inline := false
			switch {
			case bytes.IndexByte(respTypes, c) >= 0:
				f.st = stLine
			case f.requests && top && (isLetter(c) || c == '\r' || c == '\n'):
				f.st, inline = stInline, true
			default:
				f.broken = true
				continue
			}
			if top && !f.inAttr {
				evs = append(evs, event{off: i, start: true, push: c == '>'})
			}
			if !inline { // an inline command's line is read whole, this byte included
				i++
				f.typ, f.line = c, f.line[:0]
			}
		case stLine, stInline:
			j := bytes.IndexByte(b[i:], '\n')
			end := len(b)
			if j >= 0 {
				end = i + j
			}
			if f.st == stInline {
				if !isText(b[i:end]) {
					f.broken = true // binary: another protocol
					break
				}
				f.name = appendBounded(f.name, b[i:end], maxLine)
			} else if f.wantsNumber() {
				if len(f.line)+end-i > maxLine {
					f.broken = true
					break
				}
				f.line = append(f.line, b[i:end]...)
			}
			if j < 0 {
				i = len(b)
				break
			}
			i = end + 1
			if f.st == stInline {
				evs = f.inlineDone(i, evs)
			} else {
				evs = f.header(i, evs)
			}
		case stBody:
			n := min(f.body, len(b)-i)
			if f.capture {
				f.name = appendBounded(f.name, b[i:i+n], maxName+2)
			}
			f.body -= n
			i += n
			if f.body == 0 {
				f.capture = false
				f.st = stHead
				evs = f.valueDone(i, evs)
			}
		}
	}
	return evs
}

// respTypes are the RESP2 and RESP3 type bytes.
var respTypes = []byte("+-:$*_,#!=(%~>|")

// wantsNumber: the line of this type holds a length or a count.
func (f *framer) wantsNumber() bool {
	return bytes.IndexByte([]byte("$*!=%~>|"), f.typ) >= 0
}

// header handles a complete header line; i is the offset after its '\n'.
func (f *framer) header(i int, evs []event) []event {
	f.st = stHead
	if !f.wantsNumber() {
		return f.valueDone(i, evs) // a simple value: the line is all of it
	}
	n, err := strconv.ParseInt(string(bytes.TrimSuffix(f.line, []byte("\r"))), 10, 64)
	if err != nil || n < -1 || n > maxCount {
		f.broken = true // also $? and *?, the streamed forms
		return evs
	}
	switch f.typ {
	case '$', '!', '=':
		if n < 0 {
			return f.valueDone(i, evs) // null bulk
		}
		f.capture = f.requests && len(f.stack) == 1 && f.stack[0].left == f.stack[0].n
		if f.capture {
			f.name = f.name[:0]
		}
		f.st, f.body = stBody, int(n)+2
		return evs
	}
	count := int(n)
	if f.typ == '%' || f.typ == '|' {
		count *= 2
	}
	if count <= 0 {
		if f.typ == '|' { // an empty attribute decorates the next value
			if len(f.stack) == 0 {
				f.inAttr = true
			}
			return evs
		}
		return f.valueDone(i, evs) // empty or null aggregate
	}
	f.stack = append(f.stack, frame{n: count, left: count, attr: f.typ == '|'})
	return evs
}

// valueDone counts a complete value toward the aggregates it closes; at the
// top level it ends a message.
func (f *framer) valueDone(i int, evs []event) []event {
	for {
		if len(f.stack) == 0 {
			f.inAttr = false
			ev := event{off: i}
			if f.requests {
				ev.name = commandName(f.name)
			}
			return append(evs, ev)
		}
		top := &f.stack[len(f.stack)-1]
		top.left--
		if top.left > 0 {
			return evs
		}
		attr := top.attr
		f.stack = f.stack[:len(f.stack)-1]
		if attr {
			// An attribute is no element of its parent: the value it
			// decorates comes next.
			if len(f.stack) == 0 {
				f.inAttr = true
			}
			return evs
		}
	}
}

// inlineDone ends an inline command; i is the offset after its '\n'.
func (f *framer) inlineDone(i int, evs []event) []event {
	f.st = stHead
	fields := bytes.Fields(f.name)
	if len(fields) == 0 {
		return append(evs, event{off: i, empty: true})
	}
	return append(evs, event{off: i, name: commandName(fields[0])})
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

// isText: b holds only printable ASCII, tabs and CRs (an inline command's
// line; arguments that need other bytes are sent as RESP arrays).
func isText(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 && c != '\t' && c != '\r') || c >= 0x7f {
			return false
		}
	}
	return true
}

// commandName returns b upper-cased, without a trailing CRLF, bounded.
func commandName(b []byte) string {
	b = bytes.TrimRight(b, "\r\n")
	if len(b) > maxName {
		b = b[:maxName]
	}
	return string(bytes.ToUpper(b))
}

// appendBounded appends as much of src to dst as keeps it within limit.
func appendBounded(dst, src []byte, limit int) []byte {
	if room := limit - len(dst); room > 0 {
		dst = append(dst, src[:min(room, len(src))]...)
	}
	return dst
}
