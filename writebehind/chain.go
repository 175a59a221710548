package writebehind

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// streamID is a Redis stream entry id, ms-seq.
type streamID struct{ ms, seq uint64 }

func (a streamID) less(b streamID) bool {
	return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq)
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

func parseID(s string) (streamID, error) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, fmt.Errorf("writebehind: bad stream id %q", s)
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("writebehind: bad stream id %q", s)
	}
	return streamID{a, b}, nil
}

// entry is one log entry (one run of the add script): its id, the id of
// the entry before it in the shard's log (its link in the chain), the
// calls of Add it holds and their deltas summed per key.
type entry struct {
	id, prev streamID
	raw      string // id as Redis wrote it
	calls    int
	deltas   []Delta
}

// plan is what one batch does with the entries read for a shard, given the
// shard's last applied id from MySQL.
type plan struct {
	apply  []entry  // applied now, in log order
	skip   []entry  // applied before (a crash between commit and ack): only acknowledged
	calls  int      // the calls of Add in apply
	last   streamID // the last applied id once apply commits
	losses int      // chain breaks showing that Redis lost entries already applied
}

// planBatch decides, for entries sorted by id, which are applied now.
//
// Every entry names its predecessor in the shard's log (the add script
// keeps the chain head in the same atomic step), so MySQL's last applied id
// says exactly what comes next, whatever flusher read what:
//
//   - id <= last: applied before; acknowledge only.
//   - prev == last: the next entry; apply it.
//   - prev < last < id: the entries after prev that were applied are gone
//     from Redis (it restarted from an append-only file missing its last
//     second, or from nothing). No entry between prev and id exists in
//     this log, so id is the next one; apply it and count the loss.
//   - prev > last: an entry between is held by another flusher (or not
//     claimed yet): stop here; the rest stays pending for a later batch.
//
// That makes a batch exactly-once without owning the shard: two flushers
// that read interleaved parts of one log, a zombie that lost its claim, a
// replay after a crash — the FOR UPDATE on the applied row serializes them
// and the chain orders them.
func planBatch(last streamID, entries []entry) plan {
	p := plan{last: last}
	for _, e := range entries {
		switch {
		case !p.last.less(e.id):
			p.skip = append(p.skip, e)
			continue
		case e.prev == p.last:
		case e.prev.less(p.last):
			p.losses++
		default:
			return p
		}
		p.apply = append(p.apply, e)
		p.calls += e.calls
		p.last = e.id
	}
	return p
}

// sumByKey sums the entries' deltas per key, sorted by key (rows are then
// locked in one order by every flusher).
func sumByKey(entries []entry) []Delta {
	m := make(map[string]int64, len(entries))
	for _, e := range entries {
		for _, d := range e.deltas {
			m[d.Key] += d.Delta
		}
	}
	out := make([]Delta, 0, len(m))
	for k, d := range m {
		if d != 0 {
			out = append(out, Delta{Key: k, Delta: d})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
