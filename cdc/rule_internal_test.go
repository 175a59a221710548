package cdc

import (
	"errors"
	"testing"
	"time"
)

func TestRuleKeyAndVersionFromARow(t *testing.T) {
	row := Row{names: []string{"id", "tenant", "version", "updated"},
		values: []any{int64(42), []byte("acme"), int32(7), "2026-12-03 10:00:00.123456"}}
	cases := []struct {
		name    string
		rule    Rule
		key     string
		ok      bool
		version int64
		err     error
	}{
		{"int column", Rule{KeyColumn: "id", VersionColumn: "version"}, "42", true, 7, nil},
		{"binary column", Rule{KeyColumn: "tenant"}, "acme", true, 0, nil},
		{"func", Rule{Key: func(r Row) (string, bool, error) {
			id, _ := r.Value("id")
			ten, _ := r.Value("tenant")
			return string(ten.([]byte)) + ":" + formatKey(id), true, nil
		}}, "acme:42", true, 0, nil},
		{"datetime version", Rule{KeyColumn: "id", VersionColumn: "updated"}, "42", true,
			time.Date(2026, 12, 3, 10, 0, 0, 123456000, time.UTC).UnixMicro(), nil},
		{"missing key column", Rule{KeyColumn: "nope"}, "", false, 0, errNoColumn},
		{"missing version column", Rule{KeyColumn: "id", VersionColumn: "nope"}, "42", true, 0, errNoColumn},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, ok, err := tc.rule.keyOf(row)
			if err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("keyOf: %v, want %v", err, tc.err)
				}
				return
			}
			if key != tc.key || ok != tc.ok {
				t.Fatalf("keyOf = %q, %v; want %q, %v", key, ok, tc.key, tc.ok)
			}
			v, err := tc.rule.versionOf(row)
			if !errors.Is(err, tc.err) || v != tc.version {
				t.Fatalf("versionOf = %d, %v; want %d, %v", v, err, tc.version, tc.err)
			}
		})
	}
}

func TestNullKeyNamesNoEntry(t *testing.T) {
	ru := Rule{KeyColumn: "id"}
	if _, ok, err := ru.keyOf(Row{names: []string{"id"}, values: []any{nil}}); ok || err != nil {
		t.Fatalf("NULL key: ok %v, err %v; want no key, no error", ok, err)
	}
}

func TestVersionValueRefusesWhatIsNoVersion(t *testing.T) {
	for _, v := range []any{"not a date", 1.5, uint64(1 << 63)} {
		if _, err := versionValue(v); err == nil {
			t.Errorf("versionValue(%v) accepted", v)
		}
	}
}

func TestPositionRoundTrips(t *testing.T) {
	for _, s := range []string{"gtid:0-1-100", "gtid:0-1-100,1-2-5", "gtid:", "file:binlog.000003:1234"} {
		p, err := ParsePosition(s)
		if err != nil {
			t.Fatalf("ParsePosition(%q): %v", s, err)
		}
		if p.String() != s {
			t.Errorf("ParsePosition(%q).String() = %q", s, p.String())
		}
	}
	for _, s := range []string{"", "0-1-100", "file:binlog.000003", "file:x:notanumber"} {
		if _, err := ParsePosition(s); err == nil {
			t.Errorf("ParsePosition(%q) accepted", s)
		}
	}
}

func TestBehindCountsMariaDBTransactionsPerDomain(t *testing.T) {
	g := func(s string) Position { return Position{GTID: s} }
	cases := []struct {
		applied, server Position
		want            int64
	}{
		{g("0-1-100"), g("0-1-100"), 0},
		{g("0-1-90"), g("0-1-100"), 10},
		{g("0-1-90,1-2-5"), g("0-1-100,1-2-7"), 12},
		{g(""), g("0-1-3"), 3},
		{Position{File: "b.1", Pos: 4}, g("0-1-3"), -1},
	}
	for _, tc := range cases {
		if got := behind("mariadb", tc.applied, tc.server); got != tc.want {
			t.Errorf("behind(%v, %v) = %d, want %d", tc.applied, tc.server, got, tc.want)
		}
	}
}

func TestBatchKeepsTheHighestFloorPerKey(t *testing.T) {
	b := newBatch(2)
	b.add(0, "a", 3)
	b.add(0, "a", 1)
	b.add(0, "a", 5)
	b.add(1, "a", 2)
	b.add(0, "b", 0)
	if b.keys != 3 {
		t.Fatalf("keys = %d, want 3", b.keys)
	}
	if b.byTarget[0]["a"] != 5 || b.byTarget[1]["a"] != 2 || b.byTarget[0]["b"] != 0 {
		t.Fatalf("floors %v", b.byTarget)
	}
	b.reset()
	if !b.empty() {
		t.Fatal("not empty after reset")
	}
}

func TestOptionsAreValidated(t *testing.T) {
	for _, o := range []Options{
		{Flavor: "postgres"},
		{CheckpointTable: "x; DROP TABLE y"},
		{FlushInterval: -1},
		{MaxBatch: -1},
	} {
		if _, err := o.settings(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if _, err := New("root@tcp(127.0.0.1:3306)/", []Rule{{Table: "t", Target: nil, KeyColumn: "id"}}, nil); err == nil {
		t.Error("a DSN without database accepted")
	}
	if _, err := New("root@tcp(127.0.0.1:3306)/test", []Rule{{Table: "t", KeyColumn: "id"}}, nil); err == nil {
		t.Error("a rule without Target accepted")
	}
}
