package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// raceUsers is how many of the hottest users the race phase writes.
const raceUsers = 5

// raceResult is what the write race measured.
type raceResult struct {
	Rounds   int64 // evictions of a user's entry, each followed by a write
	Writes   int64 // writes that committed
	Arranged int64 // rounds in which the textbook interleaving was set up (see race)
	Held     int64 // reads held between their SELECT and their return, in arranged rounds
	Reads    int64 // Gets of the written users during the phase
	// StaleReads are Gets that returned a version older than one whose
	// write had completed before the Get began.
	StaleReads int64
	// DBStaleReads are SELECTs of the written users that returned a
	// version older than one whose write had returned before the SELECT
	// began: the database's own stale reads (the embedded go-mysql-server
	// has them; MySQL and MariaDB do not).
	DBStaleReads int64
	Users        int           // users written
	StaleUsers   int64         // written users some process still served older than the table afterwards
	Wait         time.Duration // bound on each wait of a round
}

// selectHold holds the SELECTs of one row after they have read it, until
// it is let go: readers whose SELECT comes before a write and whose return
// (and the SET after it) comes after the write.
type selectHold struct {
	mu      sync.Mutex    // protects everything below
	id      string        // row whose SELECTs are held from now on; "" for none
	release chan struct{} // closed by let; nil when nothing is held
	held    int           // SELECTs waiting on release
}

// arm holds every SELECT of id from now until disarm.
func (h *selectHold) arm(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.id, h.release, h.held = id, make(chan struct{}), 0
}

// disarm stops holding new SELECTs; those held stay held until let.
func (h *selectHold) disarm() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.id = ""
}

// let lets go of the held SELECTs and returns how many there were.
func (h *selectHold) let() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.release != nil {
		close(h.release)
	}
	n := h.held
	h.id, h.release, h.held = "", nil, 0
	return n
}

func (h *selectHold) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// wait holds a SELECT of id that has read its row, if id is armed, until
// it is let go (the race's writer always lets go before it returns) or ctx
// is done.
func (h *selectHold) wait(ctx context.Context, id string) error {
	h.mu.Lock()
	if h.id == "" || h.id != id {
		h.mu.Unlock()
		return nil
	}
	h.held++
	release := h.release
	h.mu.Unlock()
	select {
	case <-release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// raceKey is what the race phase knows of one written user.
type raceKey struct {
	committed atomic.Int64 // highest version whose write has returned
	seen      atomic.Int64 // highest version a Get has returned
	reads     atomic.Int64
	stale     atomic.Int64
	written   bool // by the writer goroutine only
}

func raise(v *atomic.Int64, to int64) {
	for {
		cur := v.Load()
		if to <= cur || v.CompareAndSwap(cur, to) {
			return
		}
	}
}

// race runs Zipf reads while a writer renames the hottest users, and
// shapes each write into the textbook's race:
//
//  1. SELECTs of the user are armed to be held after reading their row;
//  2. the user's cache entry is evicted (as an expiry would): readers
//     miss and SELECT the current row;
//  3. once a reader is held with the row it read, new SELECTs are no
//     longer held, and the write commits and the implementation does what
//     it does on a write (the textbook DELs);
//  4. once some Get has returned the written version (a reader that missed
//     after the write filled it, or the write stored it), the held readers
//     are let go: their fills of the older row come last.
//
// Textbook cache-aside SETs what it read, so the older row stays in Redis
// until the next write or the TTL. A round is arranged when steps 3 and 4
// happened within cfg.RaceWait each; otherwise (no reader of that user in
// time, a busy machine) it is counted but not arranged.
//
// The race's reads are not cut short at the end of the phase, so that a
// held reader always finishes its fill. Afterwards, every process's cache
// is compared with the table for every written user.
func (r *runner) race(ctx context.Context, p *phaseResult, zipf func(*rand.Rand) string) error {
	res := &raceResult{Wait: r.cfg.RaceWait}
	p.Race = res
	keys := map[string]*raceKey{}
	for i := 1; i <= raceUsers; i++ {
		keys[itoa(i)] = &raceKey{}
	}
	read := func(ctx context.Context, u users, id string) error {
		k := keys[id]
		var floor int64
		if k != nil {
			floor = k.committed.Load()
		}
		got, err := u.Get(context.WithoutCancel(ctx), id)
		if err != nil || k == nil {
			return err
		}
		k.reads.Add(1)
		if got.Version < floor {
			k.stale.Add(1)
		}
		raise(&k.seen, got.Version)
		return nil
	}
	hold := &r.env.db.hold
	floor := func(id string) int64 {
		if k := keys[id]; k != nil {
			return k.committed.Load()
		}
		return 0
	}
	dbStale := r.env.db.staleSelects.Load()
	r.env.db.floor.Store(&floor)
	tctx, cancel := context.WithTimeout(ctx, r.cfg.Phase)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { r.traffic(tctx, read, zipf) })
	wg.Go(func() {
		// let is deferred too: held readers never outlive the writer.
		defer hold.let()
		for i := 0; tctx.Err() == nil; i++ {
			id := itoa(1 + i%raceUsers)
			k := keys[id]
			hold.arm(id)
			ok := r.procs[i%len(r.procs)].Evict(tctx, id) == nil
			ok = ok && waitFor(tctx, r.cfg.RaceWait, func() bool { return hold.count() > 0 })
			// Disarmed before the write: every held reader read the row
			// as it was before it.
			hold.disarm()
			u, err := r.procs[(i+1)%len(r.procs)].Rename(tctx, id, fmt.Sprintf("user %s (edit %d)", id, i))
			if err == nil {
				raise(&k.committed, u.Version)
				res.Writes++
				k.written = true
			}
			ok = ok && err == nil && waitFor(tctx, r.cfg.RaceWait, func() bool { return k.seen.Load() >= u.Version })
			held := hold.let()
			res.Rounds++
			if ok {
				res.Arranged++
				res.Held += int64(held)
			}
			sleep(tctx, r.cfg.WriteEvery)
		}
	})
	wg.Wait()
	r.env.db.floor.Store(nil)
	res.DBStaleReads = r.env.db.staleSelects.Load() - dbStale
	// Quiescence: let fills that were let go at the end land, then compare
	// every written user as each process's cache serves it with the table.
	sleep(ctx, 2*r.cfg.Latency+50*time.Millisecond)
	for i := 1; i <= raceUsers; i++ {
		id := itoa(i)
		k := keys[id]
		res.Reads += k.reads.Load()
		res.StaleReads += k.stale.Load()
		if !k.written {
			continue
		}
		res.Users++
		row, err := r.env.db.get(ctx, id)
		if err != nil {
			return err
		}
		for _, u := range r.procs {
			got, err := u.Get(ctx, id)
			if err != nil {
				return err
			}
			if got.Version < row.Version {
				res.StaleUsers++
				break
			}
		}
	}
	return nil
}

// waitFor polls cond until it holds (true) or d has passed or ctx is done
// (false).
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		sleep(ctx, time.Millisecond)
	}
}
