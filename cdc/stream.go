package cdc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// ErrRule is returned (wrapped) when a Rule cannot be applied to a row: a
// Key func failed, or a version column holds no version. The relay stops
// rather than skip the row's invalidation.
var ErrRule = errors.New("cdc: a rule cannot be applied")

// stream reads the binlog from `from` and applies the rules until the
// stream fails or ctx ends. Whatever it has read when it stops is applied
// before it returns (the transactions are in the binlog, so committed); the
// applied position only ever names the end of a transaction.
func (r *Relay) stream(ctx context.Context, t *term, from Position) error {
	host, port, err := net.SplitHostPort(r.dsn.Addr)
	if err != nil {
		return fmt.Errorf("%w: DSN address %q: %v", ErrSettings, r.dsn.Addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("%w: DSN port %q: %v", ErrSettings, port, err)
	}
	gtid := from.isGTID()
	// The reader's goroutine hands events over through events (not the
	// streamer's channel), so that the relay sees when none is waiting:
	// then it applies at once what the transactions read so far changed,
	// and while events queue up (a busy stream, or Redis slower than the
	// binlog) it gathers them into larger batches.
	sctx, stop := context.WithCancel(ctx)
	events := make(chan *replication.BinlogEvent, r.s.eventBuffer)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID:                r.s.serverID,
		Flavor:                  r.s.flavor,
		Host:                    host,
		Port:                    uint16(p),
		User:                    r.dsn.User,
		Password:                r.dsn.Passwd,
		TLSConfig:               r.dsn.TLS,
		Logger:                  r.s.logger,
		HeartbeatPeriod:         r.s.heartbeat,
		ReadTimeout:             5 * r.s.heartbeat,
		DisableRetrySync:        true, // stream reconnects itself, from what it applied
		EventCacheCount:         1,    // unused: events go through the handler
		TimestampStringLocation: time.UTC,
		RowsEventDecodeFunc:     r.decodeRows,
		DiscardGTIDSet:          !gtid,
		// MariaDB 11.4+ leaves LogPos 0 unless asked; only file positions
		// need it.
		FillZeroLogPos:          !gtid && r.s.flavor == mysql.MariaDBFlavor,
		SynchronousEventHandler: handoff{events, sctx.Done()},
	})
	// stop before Close: Close waits for the reader, which may be blocked
	// handing over an event.
	defer func() { stop(); syncer.Close() }()
	var st *replication.BinlogStreamer
	if gtid {
		set, err := from.gtidSet(r.s.flavor)
		if err != nil {
			return fmt.Errorf("%w: checkpoint: %v", ErrSettings, err)
		}
		st, err = syncer.StartSyncGTID(set)
		if err != nil {
			return classify(err)
		}
	} else {
		st, err = syncer.StartSync(mysql.Position{Name: from.File, Pos: from.Pos})
		if err != nil {
			return classify(err)
		}
	}
	// The streamer only carries the reader's error now.
	failed := make(chan error, 1)
	go func() {
		_, err := st.GetEvent(sctx)
		failed <- err
	}()

	// Batches are applied under actx: a fatal error ends the one in
	// flight; a failed stream waits for it (see drain).
	actx, acancel := context.WithCancelCause(ctx)
	s := &streamState{r: r, t: t, actx: actx, b: newBatch(len(r.targets)), spare: newBatch(len(r.targets)),
		seen: from, file: from.File}
	defer func() {
		acancel(errStreamEnded)
		s.wait()
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed only while a deadline is pending
	defer timer.Stop()
	for {
		var ev *replication.BinlogEvent
		select {
		case ev = <-events:
		case res := <-s.done:
			if err := s.landed(res); err != nil {
				return err
			}
			continue
		default:
			// Nothing waiting: apply what ended transactions changed.
			if s.atBoundary {
				s.kick()
			}
			if err := s.maybeSave(ctx); err != nil {
				return err
			}
			wake, ok := s.deadline()
			if ok {
				timer.Reset(time.Until(wake))
			}
			select {
			case ev = <-events:
			case res := <-s.done:
				if err := s.landed(res); err != nil {
					return err
				}
			case err := <-failed:
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if derr := s.drain(ctx); derr != nil {
					return derr
				}
				return classify(err)
			case <-timer.C:
				s.kick()
				ok = false
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if ok {
				timer.Stop() // since Go 1.23 no stale tick is delivered after Stop
			}
			if ev == nil {
				continue
			}
		}
		if err := s.handle(ctx, ev); err != nil {
			return err
		}
	}
}

// errStreamEnded cancels the apply in flight when a stream ends.
var errStreamEnded = errors.New("cdc: the binlog stream ended")

// handoff is the reader's event handler: it passes each event to the
// relay, waiting while the relay is busy (the binlog then waits on the
// server), until done.
type handoff struct {
	events chan<- *replication.BinlogEvent
	done   <-chan struct{}
}

func (h handoff) HandleEvent(e *replication.BinlogEvent) error {
	select {
	case h.events <- e:
		return nil
	case <-h.done:
		return context.Canceled
	}
}

// streamState is one stream's reading state.
type streamState struct {
	r *Relay
	t *term
	b *batch
	// seen is the end of the last transaction read; the batch holds its
	// keys (and maybe some of the next transaction's).
	seen Position
	file string // the binlog file being read
	// txnForeign: the transaction being read is not only checkpoint writes;
	// unsaved: the applied position covers such a transaction that no
	// checkpoint covers yet. The relay's own checkpoint writes are in the
	// binlog too: saving a checkpoint for them alone would loop forever.
	txnForeign, seenForeign, unsaved bool

	// atBoundary: no rows were read since the last transaction's end, so
	// the batch holds only ended transactions' keys.
	atBoundary bool

	// One batch at a time is applied in the background while the next one
	// gathers, so that the batch size follows Redis's latency: done
	// receives its result (nil while none is in flight), flightPos and
	// flightForeign are what landing it makes applied; spare is the other
	// batch, empty.
	actx          context.Context
	done          chan applyResult
	flightPos     Position
	flightForeign bool
	spare         *batch
}

// applyResult is the end of a batch's apply.
type applyResult struct {
	b   *batch
	err error
}

// kick starts applying the batch, unless one is in flight or it is empty.
func (s *streamState) kick() {
	if s.done != nil || s.b.empty() {
		return
	}
	b := s.b
	s.b, s.spare = s.spare, nil
	// The applied position after this batch: the last transaction end
	// read. The batch may hold keys of the transaction after it too.
	s.flightPos, s.flightForeign = s.seen, s.seenForeign
	s.seenForeign = false
	done := make(chan applyResult, 1)
	s.done = done
	go func() {
		err := s.r.apply(s.actx, b)
		done <- applyResult{b, err}
	}()
}

// landed takes the end of the apply in flight.
func (s *streamState) landed(res applyResult) error {
	s.done = nil
	s.spare = res.b
	if res.err != nil {
		return res.err
	}
	s.setApplied(s.flightPos, s.flightForeign)
	if s.b.empty() {
		// Transactions read meanwhile changed no ruled row.
		s.setApplied(s.seen, s.seenForeign)
		s.seenForeign = false
	}
	return nil
}

// wait waits for the apply in flight, if any.
func (s *streamState) wait() {
	if s.done != nil {
		res := <-s.done
		s.done, s.spare = nil, res.b
	}
}

// drain applies everything read, waiting for it.
func (s *streamState) drain(ctx context.Context) error {
	for s.done != nil || !s.b.empty() {
		s.kick()
		select {
		case res := <-s.done:
			if err := s.landed(res); err != nil {
				return err
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// deadline is when the relay must act without a new event: apply a batch
// that is FlushInterval old (inside a long transaction), or write a due
// checkpoint.
func (s *streamState) deadline() (time.Time, bool) {
	switch {
	case !s.b.empty() && s.done == nil: // (a landing wakes the loop itself)
		return s.b.since.Add(s.r.s.flushInterval), true
	case s.unsaved:
		s.r.mu.Lock()
		defer s.r.mu.Unlock()
		return s.r.savedAt.Add(s.r.s.checkpointInterval), true
	}
	return time.Time{}, false
}

// handle takes one event.
func (s *streamState) handle(ctx context.Context, ev *replication.BinlogEvent) error {
	r := s.r
	r.stats.events.Add(1)
	if ev.Header.Timestamp != 0 {
		r.stats.eventTime.Store(int64(ev.Header.Timestamp))
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		s.file = string(e.NextLogName)
	case *replication.RowsEvent:
		s.atBoundary = false
		if string(e.Table.Schema) != r.dsn.DBName || string(e.Table.Table) != r.s.table {
			s.txnForeign = true
		}
		if err := r.rows(e, s.b); err != nil {
			return err
		}
		if s.b.keys >= r.s.maxBatch {
			// A large transaction: apply what it changed so far. Its
			// rows are committed (they are in the binlog); only the
			// checkpoint must wait for its end. With a batch in flight,
			// wait for it: two batches at most are held.
			if s.done != nil {
				select {
				case res := <-s.done:
					if err := s.landed(res); err != nil {
						return err
					}
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
			s.kick()
		}
	case *replication.XIDEvent:
		return s.boundary(ctx, e.GSet, ev.Header.LogPos)
	case *replication.QueryEvent:
		q := e.Query
		switch {
		case bytes.EqualFold(q, []byte("BEGIN")):
			return nil
		case bytes.EqualFold(q, []byte("COMMIT")):
		default:
			s.txnForeign = true // DDL, or a statement-logged write
			if isDML(q) {
				r.stats.statements.Add(1)
				r.s.logger.Warn("cdc: rows were changed by a statement the binlog logs without rows "+
					"(a session with binlog_format not ROW, or TRUNCATE): their keys cannot be invalidated",
					"relay", r.s.name, "schema", string(e.Schema), "query", truncate(q, 200))
			}
		}
		return s.boundary(ctx, e.GSet, ev.Header.LogPos)
	}
	return nil
}

// boundary is the end of a transaction.
func (s *streamState) boundary(ctx context.Context, gset mysql.GTIDSet, logPos uint32) error {
	r := s.r
	r.stats.transactions.Add(1)
	s.seen = Position{File: s.file, Pos: logPos}
	if gset != nil {
		s.seen.GTID = gset.String()
	}
	s.seenForeign = s.seenForeign || s.txnForeign
	s.txnForeign = false
	s.atBoundary = true
	switch {
	case s.b.empty() && s.done == nil:
		s.setApplied(s.seen, s.seenForeign)
		s.seenForeign = false
	case s.b.keys >= r.s.maxBatch || time.Since(s.b.since) >= r.s.flushInterval:
		s.kick()
	}
	return s.maybeSave(ctx)
}

// setApplied makes p the applied position; foreign: it covers a
// transaction that was not only checkpoint writes.
func (s *streamState) setApplied(p Position, foreign bool) {
	s.r.mu.Lock()
	s.r.applied = p
	s.r.mu.Unlock()
	if foreign {
		s.unsaved = true
	}
}

// maybeSave writes the checkpoint if it is due.
func (s *streamState) maybeSave(ctx context.Context) error {
	if !s.unsaved {
		return nil
	}
	r := s.r
	r.mu.Lock()
	due := time.Since(r.savedAt) >= r.s.checkpointInterval
	p := r.applied
	r.mu.Unlock()
	if !due {
		return nil
	}
	c, cancel := context.WithTimeout(ctx, r.s.applyTimeout)
	defer cancel()
	if err := s.t.save(c, p); err != nil {
		return err
	}
	r.noteSaved(p)
	s.unsaved = false
	return nil
}

// decodeRows decodes a rows event's rows only if its table has a rule:
// the events of other tables cost their header. It runs in the binlog
// reader's goroutine; r.rules is read-only once New returned.
func (r *Relay) decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	if len(r.rules[string(e.Table.Schema)][string(e.Table.Table)]) == 0 {
		return nil
	}
	return e.DecodeData(pos, data)
}

// rows adds the keys of a rows event to b.
func (r *Relay) rows(e *replication.RowsEvent, b *batch) error {
	rules := r.rules[string(e.Table.Schema)][string(e.Table.Table)]
	if len(rules) == 0 {
		r.stats.skipped.Add(1)
		return nil
	}
	names := e.Table.ColumnNameString()
	if len(names) == 0 {
		return fmt.Errorf("%w: the table map of %s.%s carries no column names (written while binlog_row_metadata was not FULL)",
			ErrSettings, e.Table.Schema, e.Table.Table)
	}
	r.stats.rowEvents.Add(1)
	typ := e.Type()
	for i := range rules {
		ru := &rules[i]
		switch typ {
		case replication.EnumRowsEventTypeInsert, replication.EnumRowsEventTypeDelete:
			deleted := typ == replication.EnumRowsEventTypeDelete
			for _, vals := range e.Rows {
				if err := r.change(b, ru, Row{names, vals}, deleted); err != nil {
					return err
				}
			}
		case replication.EnumRowsEventTypeUpdate:
			for j := 0; j+1 < len(e.Rows); j += 2 {
				before, after := Row{names, e.Rows[j]}, Row{names, e.Rows[j+1]}
				kb, okb, err := ru.keyOf(before)
				if err != nil {
					return fmt.Errorf("%w: %v", ErrRule, err)
				}
				ka, oka, err := ru.keyOf(after)
				if err != nil {
					return fmt.Errorf("%w: %v", ErrRule, err)
				}
				if okb && (!oka || kb != ka) {
					// The row left key kb: as a delete there.
					if err := r.change(b, ru, before, true); err != nil {
						return err
					}
				}
				if oka {
					if err := r.change(b, ru, after, false); err != nil {
						return err
					}
				}
			}
		}
	}
	if typ == replication.EnumRowsEventTypeUpdate {
		r.stats.rows.Add(uint64(len(e.Rows) / 2)) // before and after images
	} else {
		r.stats.rows.Add(uint64(len(e.Rows)))
	}
	return nil
}

// change adds row's key under ru to b, with the row's version as floor
// (one more for a row that left the key: nobody may cache it again).
func (r *Relay) change(b *batch, ru *rule, row Row, gone bool) error {
	key, ok, err := ru.keyOf(row)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRule, err)
	}
	if !ok {
		return nil
	}
	if key == "" {
		r.stats.emptyKeys.Add(1) // a Loader has no entry for ""
		return nil
	}
	v, err := ru.versionOf(row)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRule, err)
	}
	if v < 0 {
		v = 0 // the cache refuses negative versions; no floor
	}
	if gone && v > 0 && v < math.MaxInt64 {
		v++
	}
	b.add(ru.target, key, v)
	return nil
}

// classify wraps the stream errors that no reconnect can cure in
// ErrSettings.
func classify(err error) error {
	var me *mysql.MyError
	if errors.As(err, &me) {
		switch {
		case me.Code == mysql.ER_SPECIFIC_ACCESS_DENIED_ERROR || me.Code == mysql.ER_ACCESS_DENIED_ERROR:
			return fmt.Errorf("%w: %v", ErrSettings, err)
		case me.Code == mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG &&
			(strings.Contains(me.Message, "purged") || strings.Contains(me.Message, "ould not find")):
			return fmt.Errorf("%w: the binlog no longer holds the checkpoint, so invalidations were lost "+
				"(expire the cached keys, then delete the relay's checkpoint row): %v", ErrSettings, err)
		}
	}
	return err
}

// isDML reports whether a logged statement changes rows (TRUNCATE is
// always logged as a statement).
func isDML(q []byte) bool {
	q = bytes.TrimLeft(q, " \t\r\n(")
	for _, w := range []string{"INSERT", "UPDATE", "DELETE", "REPLACE", "TRUNCATE"} {
		if len(q) >= len(w) && bytes.EqualFold(q[:len(w)], []byte(w)) {
			return true
		}
	}
	return false
}

func truncate(q []byte, n int) string {
	if len(q) > n {
		return string(q[:n]) + "…"
	}
	return string(q)
}
