package writebehind

import (
	"slices"
	"testing"
)

func TestPlanBatch(t *testing.T) {
	id := func(ms uint64) streamID { return streamID{ms: ms} }
	e := func(ms, prev uint64) entry {
		return entry{id: id(ms), prev: id(prev), calls: 1, deltas: []Delta{{"k", 1}}}
	}
	ids := func(es []entry) []uint64 {
		var out []uint64
		for _, x := range es {
			out = append(out, x.id.ms)
		}
		return out
	}
	tests := []struct {
		name        string
		last        uint64
		entries     []entry
		apply, skip []uint64
		losses      int
	}{
		{"first entries of a log", 0, []entry{e(1, 0), e(2, 1), e(3, 2)}, []uint64{1, 2, 3}, nil, 0},
		{"continues after the applied id", 2, []entry{e(3, 2), e(4, 3)}, []uint64{3, 4}, nil, 0},
		{"replay after a crash between commit and ack", 3, []entry{e(2, 1), e(3, 2), e(4, 3)}, []uint64{4}, []uint64{2, 3}, 0},
		{"all applied before", 9, []entry{e(8, 7), e(9, 8)}, nil, []uint64{8, 9}, 0},
		{"gap: an earlier entry is with another flusher", 2, []entry{e(4, 3), e(5, 4)}, nil, nil, 0},
		{"gap inside the batch stops it", 2, []entry{e(3, 2), e(5, 4), e(6, 5)}, []uint64{3}, nil, 0},
		{"Redis lost applied entries (AOF tail)", 7, []entry{e(8, 5), e(9, 8)}, []uint64{8, 9}, nil, 1},
		{"Redis restarted empty", 7, []entry{e(20, 0), e(21, 20)}, []uint64{20, 21}, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planBatch(id(tt.last), tt.entries)
			if got := ids(p.apply); !slices.Equal(got, tt.apply) {
				t.Errorf("apply %v, want %v", got, tt.apply)
			}
			if got := ids(p.skip); !slices.Equal(got, tt.skip) {
				t.Errorf("skip %v, want %v", got, tt.skip)
			}
			if p.losses != tt.losses {
				t.Errorf("losses %d, want %d", p.losses, tt.losses)
			}
			if want := id(tt.last); len(tt.apply) > 0 {
				want = id(tt.apply[len(tt.apply)-1])
				if p.last != want {
					t.Errorf("last %v, want %v", p.last, want)
				}
			} else if p.last != want {
				t.Errorf("last %v, want %v (unchanged)", p.last, want)
			}
		})
	}
}

func TestSumByKey(t *testing.T) {
	got := sumByKey([]entry{
		{deltas: []Delta{{"b", 2}, {"a", 1}}},
		{deltas: []Delta{{"b", 3}, {"c", 1}}},
		{deltas: []Delta{{"c", -1}}},
	})
	want := []Delta{{"a", 1}, {"b", 5}}
	if !slices.Equal(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
}

func TestParseID(t *testing.T) {
	for _, s := range []string{"0-0", "1700000000000-12", "18446744073709551615-18446744073709551615"} {
		id, err := parseID(s)
		if err != nil || id.String() != s {
			t.Errorf("parseID(%q) = %v, %v", s, id, err)
		}
	}
	for _, s := range []string{"", "1", "a-1", "1-", "-1"} {
		if _, err := parseID(s); err == nil {
			t.Errorf("parseID(%q): no error", s)
		}
	}
}
