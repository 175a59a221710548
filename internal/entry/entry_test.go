package entry

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	good := Header(FlagPayload, 5, 3, 0, 1, 0, "")
	for _, tc := range []struct {
		name    string
		in      string
		usable  bool
		corrupt bool
	}{
		{"absent", "", false, false},
		{"value", good + `{}`, true, false},
		{"negative", Header(FlagNegative, 5, 0, 0, 0, 0, ""), true, false},
		{"tombstone", Header(FlagInvalidated, 5, 3, 0, 0, 0, ""), false, false},
		{"tombstone keeping its payload", Header(FlagInvalidated|FlagPayload, 5, 3, 0, 0, 0, "") + `{}`, false, false},
		{"lease only", Header(0, 5, 0, 0, 0, 99, "tok"), false, false},
		{"no generation", Header(FlagPayload, 0, 3, 0, 0, 0, "") + `{}`, false, true},
		{"short", good[:50], false, true},
		{"bad magic", "c1" + good[2:], false, true},
		{"bad flags", good[:2] + "g" + good[3:], false, true},
		{"bad digit", good[:10] + "x" + good[11:], false, true},
		{"payload without its flag", Header(0, 5, 3, 0, 0, 0, "") + `{}`, false, true},
		{"negative with a payload", Header(FlagNegative|FlagPayload, 5, 0, 0, 0, 0, "") + `{}`, false, true},
		{"over the limit", good + strings.Repeat("x", 11), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Decode(tc.in, 10)
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

func TestLeaseOwnerOnlyWhileLive(t *testing.T) {
	e, err := Decode(Header(0, 5, 0, 0, 0, 99, "tok"), 0)
	if err != nil || e.LeaseOwner != "tok" || e.LeaseDeadline != 99 {
		t.Fatalf("%+v %v", e, err)
	}
	// A token with no deadline records a finished call, not a lease.
	e, err = Decode(Header(FlagNegative, 5, 0, 0, 0, 0, "tok"), 0)
	if err != nil || e.LeaseOwner != "" {
		t.Fatalf("%+v %v", e, err)
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	s := Header(FlagPayload, 5, 3, 100, 1, 0, "") + `{"a":1}`
	if n := testing.AllocsPerRun(100, func() { _, _ = Decode(s, 100) }); n != 0 {
		t.Fatalf("Decode allocates %v times", n)
	}
}

// FuzzDecode feeds arbitrary values to Decode: it must never panic, and it
// either fails with ErrCorrupt or returns an entry that agrees with its
// input.
func FuzzDecode(f *testing.F) {
	f.Add(Header(FlagPayload, 5, 3, 0, 1, 0, "") + `{}`)
	f.Add(Header(FlagNegative, 1795397857463956, 0, 0, 12, 0, ""))
	f.Add(Header(FlagInvalidated, 5, 9223372036854775807, 0, 0, 0, ""))
	f.Add(Header(0, 5, 0, 0, 0, 1795397857463, "tok/1@host"))
	f.Add("c2" + strings.Repeat("9", 120))
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Decode(s, 64)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if e.Exists != (s != "") {
			t.Fatalf("Exists = %v for %q", e.Exists, s)
		}
		if e.Exists && e.Generation <= 0 {
			t.Fatalf("entry without a generation accepted: %+v", e)
		}
		if e.HasPayload && e.Payload != s[HeaderSize:] {
			t.Fatalf("payload %q of %q", e.Payload, s)
		}
		if len(e.Payload) > 64 {
			t.Fatalf("payload over the limit accepted: %d bytes", len(e.Payload))
		}
		if e.Usable() && e.Invalidated() {
			t.Fatalf("an invalidated entry is usable: %+v", e)
		}
	})
}
