package cdc

import (
	"context"
	"os"
	"strconv"
	"time"

	"github.com/f4df6ac3/cache/internal/relaystatus"
)

// publishStatus publishes the relay's status every StatusInterval until
// ctx ends (see Options.StatusRedis): the record while this relay leads,
// a heartbeat always. When it ends it removes its heartbeat; a leader's
// record is left to expire.
func (r *Relay) publishStatus(ctx context.Context) {
	host, _ := os.Hostname()
	pid := os.Getpid()
	id := relaystatus.InstanceID(host, pid, strconv.FormatUint(uint64(r.s.serverID), 36))
	every := r.s.statusInterval
	tick := time.NewTicker(every)
	defer tick.Stop()
	var (
		prev     Stats
		prevAt   time.Time
		lastWarn time.Time
	)
	for {
		st := r.Stats()
		now := time.Now()
		var rec *relaystatus.Status
		if st.Leader {
			rec = r.statusRecord(st, host, pid, now)
			if !prevAt.IsZero() {
				if dt := now.Sub(prevAt).Seconds(); dt > 0 {
					rec.EventsPerSec = float64(st.Events-prev.Events) / dt
					rec.InvalidationsPerSec = float64(st.Invalidations-prev.Invalidations) / dt
					rec.ApplyErrorsPerSec = float64(st.ApplyErrors-prev.ApplyErrors) / dt
				}
			}
			prev, prevAt = st, now
		} else {
			prevAt = time.Time{}
		}
		c, cancel := context.WithTimeout(ctx, max(every, time.Second))
		err := relaystatus.Publish(c, r.s.statusRedis, r.s.statusPrefix, r.s.name, id, rec, every)
		cancel()
		if err != nil && ctx.Err() == nil && time.Since(lastWarn) >= time.Minute {
			lastWarn = time.Now()
			r.s.logger.Warn("cdc: cannot publish the relay's status", "relay", r.s.name, "error", err)
		}
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			relaystatus.Leave(c, r.s.statusRedis, r.s.statusPrefix, r.s.name, id)
			cancel()
			return
		case <-tick.C:
		}
	}
}

// statusRecord is the leader's record of st.
func (r *Relay) statusRecord(st Stats, host string, pid int, now time.Time) *relaystatus.Status {
	r.mu.Lock()
	since, savedAt := r.since, r.savedAt
	r.mu.Unlock()
	rec := &relaystatus.Status{
		Relay: r.s.name, Host: host, PID: pid,
		Source: r.dsn.Addr, Flavor: r.s.flavor, Database: r.dsn.DBName, CheckpointTable: r.s.table,
		LeaderSince: since, PublishedAt: now, IntervalMs: r.s.statusInterval.Milliseconds(),
		Applied: st.Applied.String(), Checkpoint: st.Checkpoint.String(), CheckpointAt: savedAt,
		Behind: st.Behind, EventLagMs: -1, CheckpointAgeMs: -1,
		Events: st.Events, Rows: st.Rows, Transactions: st.Transactions, Invalidations: st.Invalidations,
		ApplyErrors: st.ApplyErrors, Reconnects: st.Reconnects, Statements: st.Statements,
	}
	if !savedAt.IsZero() {
		rec.CheckpointAgeMs = now.Sub(savedAt).Milliseconds()
	}
	if st.Server != (Position{}) {
		rec.Server = st.Server.String()
	}
	if ts := r.stats.eventTime.Load(); ts > 0 {
		rec.EventTime = time.Unix(ts, 0)
		rec.EventLagMs = max(0, now.Sub(rec.EventTime).Milliseconds())
	}
	return rec
}

// publishStopped publishes the record of a relay that stopped on err.
func (r *Relay) publishStopped(err error) {
	host, _ := os.Hostname()
	now := time.Now()
	rec := r.statusRecord(r.Stats(), host, os.Getpid(), now)
	rec.Error, rec.StoppedAt = err.Error(), now
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if perr := relaystatus.PublishStopped(ctx, r.s.statusRedis, r.s.statusPrefix, r.s.name, rec); perr != nil {
		r.s.logger.Warn("cdc: cannot publish that the relay stopped", "relay", r.s.name, "error", perr)
	}
}
