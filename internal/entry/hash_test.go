package entry

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeHash(t *testing.T) {
	vals := func(kv ...string) []any {
		out := make([]any, len(Fields))
		for i := 0; i < len(kv); i += 2 {
			for j, f := range Fields {
				if f == kv[i] {
					out[j] = kv[i+1]
				}
			}
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		in      []any
		usable  bool
		corrupt bool
	}{
		{"absent", vals(), false, false},
		{"value", vals("p", "{}", "g", "5", "v", "3"), true, false},
		{"negative", vals("f", "1", "g", "5"), true, false},
		{"tombstone", vals("f", "2", "g", "5", "v", "3"), false, false},
		{"lease only", vals("g", "5", "lo", "tok", "ld", "99"), false, false},
		{"no generation", vals("p", "{}"), false, true},
		{"bad number", vals("p", "{}", "g", "x"), false, true},
		{"negative number", vals("p", "{}", "g", "-5"), false, true},
		{"unknown flag", vals("p", "{}", "g", "5", "f", "4"), false, true},
		{"wrong arity", []any{"a"}, false, true},
		{"wrong type", append(vals()[:len(Fields)-1], int64(3)), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := DecodeHash(tc.in)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("err = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Usable() != tc.usable {
				t.Fatalf("Usable() = %v", e.Usable())
			}
		})
	}
}

// FuzzDecodeHash feeds arbitrary field values to DecodeHash: it must never panic,
// and it either fails with ErrCorrupt or returns an entry that agrees with
// its input.
func FuzzDecodeHash(f *testing.F) {
	f.Add("{}", "", "5", "3", "", "1", "", "")
	f.Add("", "1", "5", "", "", "", "", "")
	f.Add("", "2", "1795397857463956", "9", "", "12", "", "")
	f.Add("", "", "5", "", "", "", "tok", "1795397857463")
	f.Add("x", "3", "-1", "1e3", " 5", "0x10", "", "9223372036854775808")
	f.Fuzz(func(t *testing.T, p, fl, g, v, s, d, lo, ld string) {
		in := make([]any, len(Fields))
		for i, x := range []string{p, fl, g, v, s, d, lo, ld} {
			if x != "" {
				in[i] = x
			}
		}
		e, err := DecodeHash(in)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if e.Exists != (strings.Join([]string{p, fl, g, v, s, d, lo, ld}, "") != "") {
			t.Fatalf("Exists = %v for %q", e.Exists, in)
		}
		if e.HasPayload && e.Payload != p {
			t.Fatalf("payload %q, want %q", e.Payload, p)
		}
		if e.Exists && e.Generation <= 0 {
			t.Fatalf("entry without a generation accepted: %+v", e)
		}
		if e.Usable() && e.Invalidated() {
			t.Fatalf("an invalidated entry is usable: %+v", e)
		}
	})
}
