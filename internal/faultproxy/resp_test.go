package faultproxy

import (
	"reflect"
	"strings"
	"testing"
)

// frame feeds stream to a framer in the given chunk sizes (cycling) and
// returns the events with offsets relative to the whole stream.
func frameStream(requests bool, stream string, sizes ...int) ([]event, bool) {
	f := framer{requests: requests}
	var all []event
	base := 0
	for k := 0; base < len(stream); k++ {
		n := min(sizes[k%len(sizes)], len(stream)-base)
		evs := f.feed([]byte(stream[base:base+n]), nil)
		for _, ev := range evs {
			ev.off += base
			all = append(all, ev)
		}
		base += n
	}
	return all, f.broken
}

func TestFramer(t *testing.T) {
	type msg struct {
		text string
		push bool
		name string
	}
	for _, tc := range []struct {
		name     string
		requests bool
		msgs     []msg
	}{
		{"RESP2 replies", false, []msg{
			{text: "+OK\r\n"}, {text: "-ERR wrong type\r\n"}, {text: ":42\r\n"},
			{text: "$5\r\nhello\r\n"}, {text: "$-1\r\n"}, {text: "$0\r\n\r\n"},
			{text: "*-1\r\n"}, {text: "*0\r\n"},
			{text: "*3\r\n$1\r\na\r\n:1\r\n*2\r\n+x\r\n$3\r\n\r\n\n\r\n"},
			{text: "$11\r\n*1\r\n$1\r\nx\r\n\r\n"}, // a bulk whose bytes look like RESP
		}},
		{"RESP3 replies", false, []msg{
			{text: "_\r\n"}, {text: ",3.14\r\n"}, {text: "#t\r\n"}, {text: "(3492890328409238509324850943850943825024385\r\n"},
			{text: "!21\r\nSYNTAX invalid syntax\r\n"}, {text: "=15\r\ntxt:Some string\r\n"},
			{text: "%2\r\n+first\r\n:1\r\n+second\r\n%1\r\n+a\r\n~2\r\n:1\r\n:2\r\n"},
			{text: "~0\r\n"}, {text: "%0\r\n"},
			{text: ">3\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n_\r\n", push: true},
			{text: "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n"},
			{text: "*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n"}, // an attribute inside an array is no element
			{text: "|0\r\n+OK\r\n"},
		}},
		{"commands", true, []msg{
			{text: "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", name: "GET"},
			{text: "*3\r\n$7\r\nevalsha\r\n$40\r\n0123456789012345678901234567890123456789\r\n$1\r\n0\r\n", name: "EVALSHA"},
			{text: "PING\r\n", name: "PING"},
			{text: "set a  b\n", name: "SET"},
			{text: "*1\r\n$48\r\n" + strings.Repeat("X", 48) + "\r\n", name: strings.Repeat("X", maxName)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stream strings.Builder
			var want []event
			for _, m := range tc.msgs {
				want = append(want, event{off: stream.Len(), start: true, push: m.push})
				stream.WriteString(m.text)
				want = append(want, event{off: stream.Len(), name: m.name})
			}
			for _, sizes := range [][]int{{1 << 20}, {1}, {2}, {3}, {7}, {1, 5, 2}} {
				got, broken := frameStream(tc.requests, stream.String(), sizes...)
				if broken {
					t.Fatalf("chunks %v: framer broke", sizes)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("chunks %v:\n got %+v\nwant %+v", sizes, got, want)
				}
			}
		})
	}
}

func TestFramerBreaksOnOtherProtocols(t *testing.T) {
	for _, tc := range []struct {
		name     string
		requests bool
		stream   string
	}{
		{"a MySQL handshake", false, "J\x00\x00\x00\x0a10.11.6-MariaDB\x00"},
		{"a line", false, "ping\n"},
		{"a bad count", false, "*x\r\n"},
		{"a streamed string", false, "$?\r\n;4\r\nHell\r\n;0\r\n"},
		{"an overlong header", false, "$" + strings.Repeat("1", 100) + "\r\n"},
		{"a nested non-RESP byte", true, "*1\r\nGET\r\n"},
		{"a MySQL handshake response", true, "U\x00\x00\x01\x85\xa6\xff\x01\x00\x00\x00\x01\r\n"},
		{"binary", true, "\xb5\x00\x00\x01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, broken := frameStream(tc.requests, tc.stream, 3)
			if !broken {
				t.Fatalf("framer did not break; events %+v", evs)
			}
			for _, ev := range evs {
				if !tc.requests && ev.start && ev.off == 0 && tc.stream[0] != '*' && tc.stream[0] != '$' {
					t.Fatalf("a start event for a non-RESP first byte: %+v", evs)
				}
			}
		})
	}
}

// FuzzFramer: any bytes, in any chunking, give the same events and never
// a panic.
func FuzzFramer(f *testing.F) {
	f.Add("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 3, true)
	f.Add("%1\r\n|1\r\n+a\r\n:1\r\n+k\r\n>2\r\n+m\r\n:3\r\n", 2, false)
	f.Add("PING\r\n\r\nset a b\n", 1, true)
	f.Fuzz(func(t *testing.T, stream string, size int, requests bool) {
		size = max(1, size%17)
		whole, wb := frameStream(requests, stream, len(stream)+1)
		split, sb := frameStream(requests, stream, size)
		if wb != sb || !reflect.DeepEqual(whole, split) {
			t.Fatalf("chunking changed the events:\n%+v (broken %v)\n%+v (broken %v)", whole, wb, split, sb)
		}
	})
}
