package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/f4df6ac3/cache"
)

// Each phase uses its own key, so that it can also run on its own (see
// main_test.go), and returns what it measured; print and broken say what
// that means.

type stampedeResult struct {
	Queries, Errors int64 // database queries, failed Gets
	Took            time.Duration
	LeaseWaits      uint64 // processes that waited on another's lease
	Coalesced       uint64 // Gets that joined their process's load
	RedisErrors     uint64
}

// stampede reads one cold key from Goroutines goroutines in every process,
// all at once.
func (d *demo) stampede(ctx context.Context, key string) (stampedeResult, error) {
	s0, q0 := d.stats(), d.db.reads.Load()
	errs, took := d.everyone(ctx, d.cfg.Goroutines, func(ctx context.Context, p process) error {
		_, err := p.users.Get(ctx, key)
		return err
	})
	s := d.stats()
	return stampedeResult{
		Queries:     d.db.reads.Load() - q0,
		Errors:      errs,
		Took:        took,
		LeaseWaits:  s.LeaseWaits - s0.LeaseWaits,
		Coalesced:   s.Coalesced - s0.Coalesced,
		RedisErrors: s.RedisErrors - s0.RedisErrors,
	}, nil
}

func (r stampedeResult) print(w io.Writer) {
	fmt.Fprintf(w, "   database queries %d, errors %d, %v\n", r.Queries, r.Errors, r.Took.Round(time.Millisecond))
	fmt.Fprintf(w, "   (Gets that joined their process's load %d, processes that waited on another's lease %d, Redis errors %d)\n",
		r.Coalesced, r.LeaseWaits, r.RedisErrors)
}

func (r stampedeResult) broken() (b []string) {
	if r.Queries != 1 {
		b = append(b, fmt.Sprintf("stampede: %d database queries, want 1", r.Queries))
	}
	if r.Errors != 0 {
		b = append(b, fmt.Sprintf("stampede: %d Gets failed", r.Errors))
	}
	return b
}

type warmResult struct {
	Gets, Hits, Queries, Errors int64
	Took                        time.Duration
	RedisErrors                 uint64 // Redis calls that failed
	RedisSkipped                uint64 // Redis calls an open breaker skipped
}

// warm reads a cached key Reads times from each of Readers goroutines per
// process. (Far more concurrent readers than Redis can answer within
// Options.RedisTimeout turn hits into Redis errors: those Gets fail open to
// the database, one load per key and process at a time.)
func (d *demo) warm(ctx context.Context, key string) (warmResult, error) {
	if _, err := d.procs[0].users.Get(ctx, key); err != nil {
		return warmResult{}, err
	}
	s0, q0 := d.stats(), d.db.reads.Load()
	errs, took := d.everyone(ctx, d.cfg.Readers, func(ctx context.Context, p process) error {
		for range d.cfg.Reads {
			if _, err := p.users.Get(ctx, key); err != nil {
				return err
			}
		}
		return nil
	})
	s := d.stats()
	return warmResult{
		Gets:         int64(d.cfg.Processes * d.cfg.Readers * d.cfg.Reads),
		Hits:         int64(s.Hits - s0.Hits),
		Queries:      d.db.reads.Load() - q0,
		Errors:       errs,
		Took:         took,
		RedisErrors:  s.RedisErrors - s0.RedisErrors,
		RedisSkipped: s.RedisSkipped - s0.RedisSkipped,
	}, nil
}

func (r warmResult) print(w io.Writer) {
	fmt.Fprintf(w, "   hit rate %.1f%%, database queries %d, errors %d, %v (%.0f Gets/s)\n",
		100*float64(r.Hits)/float64(r.Gets), r.Queries, r.Errors, r.Took.Round(time.Millisecond),
		float64(r.Gets)/r.Took.Seconds())
	fmt.Fprintf(w, "   (Redis calls failed %d, skipped by an open breaker %d)\n", r.RedisErrors, r.RedisSkipped)
}

func (r warmResult) broken() (b []string) {
	if r.Errors != 0 {
		b = append(b, fmt.Sprintf("warm reads: %d Gets failed", r.Errors))
	}
	return b
}

type raceResult struct {
	ReaderGot, Written, NextGet User
	StaleSetsPrevented          uint64
}

// staleSetRace makes the classic cache-aside race happen on purpose:
//
//	reader: miss, load v1 ........................... fill v1 (stale!)
//	writer:                update to v2, invalidate
//
// The reader is a process whose LoadFunc, once it has read the row, waits
// until the writer has committed and invalidated. Channels, not sleeps,
// order the steps, so the race happens on every run.
func (d *demo) staleSetRace(ctx context.Context, key string) (raceResult, error) {
	var (
		loaded      = make(chan struct{}) // closed once the reader has read the old row
		invalidated = make(chan struct{}) // closed once the writer is done
		readerDone  = sync.OnceFunc(func() { close(loaded) })
		writerDone  = sync.OnceFunc(func() { close(invalidated) })
	)
	reader, err := d.newLoader(d.procs[0].rdb, func(ctx context.Context, key string) (User, error) {
		u, err := d.db.get(ctx, key)
		readerDone()
		<-invalidated
		return u, err
	})
	if err != nil {
		return raceResult{}, err
	}
	defer reader.Close()
	defer writerDone() // never leave the reader blocked, even on error
	writer := d.procs[1].users

	var r raceResult
	readErr := make(chan error, 1)
	go func() {
		var err error
		r.ReaderGot, err = reader.Get(ctx, key)
		readErr <- err
	}()

	<-loaded
	if r.Written, err = d.db.rename(ctx, key, "Alan M. Turing"); err != nil {
		return r, err
	}
	err = writer.Invalidate(ctx, key)
	writerDone()
	if err != nil {
		return r, err
	}
	if err := <-readErr; err != nil {
		return r, err
	}
	// The fill may still be on its way to Redis when Get returns; Close
	// waits for it.
	reader.Close()
	r.StaleSetsPrevented = reader.Stats().StaleSetsPrevented

	r.NextGet, err = d.procs[0].users.Get(ctx, key)
	return r, err
}

func (r raceResult) print(w io.Writer) {
	fmt.Fprintf(w, "   reader got %s (it began before the write); its fill was rejected: stale sets prevented %d\n",
		show(r.ReaderGot), r.StaleSetsPrevented)
	fmt.Fprintf(w, "   next Get: %s (plain cache-aside would serve %s until the TTL)\n", show(r.NextGet), show(r.ReaderGot))
}

func (r raceResult) broken() (b []string) {
	if r.StaleSetsPrevented == 0 {
		b = append(b, "race: the reader's stale fill was not rejected")
	}
	if r.NextGet != r.Written {
		b = append(b, fmt.Sprintf("race: next Get returned %s, want %s", show(r.NextGet), show(r.Written)))
	}
	return b
}

type writeThroughResult struct {
	Written User
	// After the write, one Get in every process:
	Hits, Queries, Stale int64
}

// writeThrough renames a cached user with WriteThrough in one process and
// then reads it from every process.
func (d *demo) writeThrough(ctx context.Context, key string) (writeThroughResult, error) {
	var r writeThroughResult
	if _, err := d.procs[0].users.Get(ctx, key); err != nil {
		return r, err
	}
	var err error
	r.Written, err = d.procs[1].users.WriteThrough(ctx, key, func(ctx context.Context) (User, error) {
		return d.db.rename(ctx, key, "Grace Brewster Hopper")
	})
	if err != nil {
		return r, err
	}
	s0, q0 := d.stats(), d.db.reads.Load()
	for _, p := range d.procs {
		u, err := p.users.Get(ctx, key)
		if err != nil {
			return r, err
		}
		if u != r.Written {
			r.Stale++
		}
	}
	r.Hits = int64(d.stats().Hits - s0.Hits)
	r.Queries = d.db.reads.Load() - q0
	return r, nil
}

func (r writeThroughResult) print(w io.Writer) {
	fmt.Fprintf(w, "   wrote %s; then one Get per process: hits %d, older values %d, database queries %d\n",
		show(r.Written), r.Hits, r.Stale, r.Queries)
}

func (r writeThroughResult) broken() (b []string) {
	if r.Stale != 0 {
		b = append(b, fmt.Sprintf("write-through: %d processes read an older value", r.Stale))
	}
	if r.Queries != 0 {
		b = append(b, fmt.Sprintf("write-through: %d database queries after the write, want 0", r.Queries))
	}
	return b
}

type outageResult struct {
	// While Redis is down:
	Gets, Errors, Queries int64
	PerGet                [2]time.Duration // mean Get latency with the breaker closed, open
	RedisErrors           uint64           // Redis calls that failed
	RedisSkipped          uint64           // Redis calls the open breaker saved
	BreakersOpened        uint64           // processes whose breaker opened
	Written               User
	WriteErr              error
	Queued                uint64 // invalidations queued by the write
	// Once it is back:
	CatchUp time.Duration // until the queued invalidation was applied
	After   User          // what a Get returns then
}

// outage stops the embedded Redis, reads and writes while it is down, and
// starts it again.
func (d *demo) outage(ctx context.Context, key string) (outageResult, error) {
	var r outageResult
	if _, err := d.procs[0].users.Get(ctx, key); err != nil {
		return r, err
	}

	d.mr.Close()
	s0, q0 := d.stats(), d.db.reads.Load()
	// Every process reads the key ten times in a row; the first Gets pay
	// the Redis timeout, until the process's breaker opens.
	var (
		mu   sync.Mutex // protects r.Gets, r.Errors, took, gets
		took [2]time.Duration
		gets [2]int
		wg   sync.WaitGroup
	)
	for _, p := range d.procs {
		wg.Go(func() {
			for range 10 {
				open := 0
				if p.users.BreakerState() == cache.BreakerOpen {
					open = 1
				}
				start := time.Now()
				_, err := p.users.Get(ctx, key)
				mu.Lock()
				took[open] += time.Since(start)
				gets[open]++
				r.Gets++
				if err != nil {
					r.Errors++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for i := range took {
		if gets[i] > 0 {
			r.PerGet[i] = took[i] / time.Duration(gets[i])
		}
	}
	r.Queries = d.db.reads.Load() - q0

	// The commit succeeds; Redis cannot be told, so the invalidation is
	// queued in the writing process and retried in the background.
	writer := d.procs[1].users
	r.Written, r.WriteErr = writer.WriteThrough(ctx, key, func(ctx context.Context) (User, error) {
		return d.db.rename(ctx, key, "Edsger W. Dijkstra")
	})
	s := d.stats()
	r.RedisErrors = s.RedisErrors - s0.RedisErrors
	r.RedisSkipped = s.RedisSkipped - s0.RedisSkipped
	r.BreakersOpened = s.BreakerOpened - s0.BreakerOpened
	r.Queued = s.InvalidationsQueued - s0.InvalidationsQueued

	// Restart keeps the data: Redis still holds the old row until the
	// queued invalidation reaches it.
	if err := d.mr.Restart(); err != nil {
		return r, err
	}
	restarted := time.Now()
	if err := waitFor(ctx, 10*time.Second, func() bool {
		return writer.Stats().InvalidationsRetried > s0.InvalidationsRetried
	}); err != nil {
		return r, fmt.Errorf("queued invalidation not applied: %w", err)
	}
	r.CatchUp = time.Since(restarted)
	var err error
	r.After, err = d.procs[0].users.Get(ctx, key)
	return r, err
}

func (r outageResult) print(w io.Writer) {
	fmt.Fprintf(w, "   Redis down: %d Gets, errors %d, database queries %d; %v per Get until the breaker opened, %v after\n",
		r.Gets, r.Errors, r.Queries, r.PerGet[0].Round(100*time.Microsecond), r.PerGet[1].Round(100*time.Microsecond))
	fmt.Fprintf(w, "   (Redis calls failed %d, breakers opened %d, Redis calls skipped by an open breaker %d)\n",
		r.RedisErrors, r.BreakersOpened, r.RedisSkipped)
	fmt.Fprintf(w, "   WriteThrough while down: wrote %s, error %v, invalidations queued %d\n",
		show(r.Written), r.WriteErr, r.Queued)
	fmt.Fprintf(w, "   Redis back: the queued invalidation was applied after %v; next Get: %s\n",
		r.CatchUp.Round(time.Millisecond), show(r.After))
}

func (r outageResult) broken() (b []string) {
	if r.Errors != 0 {
		b = append(b, fmt.Sprintf("outage: %d Gets failed", r.Errors))
	}
	if r.WriteErr != nil {
		b = append(b, fmt.Sprintf("outage: WriteThrough failed after the commit: %v", r.WriteErr))
	}
	if r.After != r.Written {
		b = append(b, fmt.Sprintf("outage: once Redis was back, Get returned %s, want %s", show(r.After), show(r.Written)))
	}
	return b
}

// stats adds up the counters of every process.
func (d *demo) stats() cache.Stats {
	var sum cache.Stats
	for _, p := range d.procs {
		s := p.users.Stats()
		sum.Hits += s.Hits
		sum.Misses += s.Misses
		sum.Loads += s.Loads
		sum.Coalesced += s.Coalesced
		sum.LeaseWaits += s.LeaseWaits
		sum.StaleSetsPrevented += s.StaleSetsPrevented
		sum.RedisErrors += s.RedisErrors
		sum.RedisSkipped += s.RedisSkipped
		sum.BreakerOpened += s.BreakerOpened
		sum.InvalidationsQueued += s.InvalidationsQueued
		sum.InvalidationsRetried += s.InvalidationsRetried
	}
	return sum
}

// everyone runs f on n goroutines in each process, all released at once,
// and returns how many calls failed and how long they all took.
func (d *demo) everyone(ctx context.Context, n int, f func(ctx context.Context, p process) error) (errs int64, took time.Duration) {
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
		start  = make(chan struct{})
	)
	for _, p := range d.procs {
		for range n {
			wg.Go(func() {
				<-start
				if err := f(ctx, p); err != nil {
					failed.Add(1)
				}
			})
		}
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	return failed.Load(), time.Since(t0)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
