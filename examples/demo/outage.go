package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Recovery after an outage is the time from Redis coming back to the hit
// rate over the last recoveryWindow reaching recoveryShare of the steady
// phase's hit rate, checked every recoveryPoll.
const (
	recoveryShare  = 0.9
	recoveryWindow = 100 * time.Millisecond
	recoveryPoll   = 25 * time.Millisecond
)

// outageResult is what the outage phase measured.
type outageResult struct {
	DownAt, UpAt float64 // when Redis was stopped and started again, seconds since the run began
	After        float64 // how long the phase ran after Redis came back, seconds
	Down         span    // requests running at some moment while Redis was down
	DownQueries  int64   // database SELECTs while Redis was down
	Lib          libCounts
	// Steady is the steady phase's hit rate and Threshold the share of it
	// counted as recovered, in percent.
	Steady, Threshold float64
	Recovered         bool
	Recovery          float64 // seconds from Redis back to the hit rate ≥ Threshold
	// End is what the requests in the phase's last recoveryWindow
	// measured, and EndHitRate their hit rate.
	End        span
	EndHitRate float64
	Window     time.Duration
}

// point is one poll of the hit rate after Redis came back.
type point struct {
	at             time.Time
	requests, hits int64
}

func (r *runner) point() point {
	r.rec.mu.Lock()
	n := r.rec.requests
	r.rec.mu.Unlock()
	return point{at: time.Now(), requests: n, hits: int64(r.hits())}
}

// outage runs Zipf traffic, stops the embedded Redis a quarter of a phase
// in, starts it again (with its data) half a phase later, and keeps going
// until the hit rate has recovered and at least half a phase has passed,
// or cfg.MaxRecovery has.
func (r *runner) outage(ctx context.Context, p *phaseResult, zipf func(*rand.Rand) string) error {
	if r.env.mr == nil {
		p.Skipped = "the demo can only stop its embedded miniredis, not " + r.cfg.RedisAddr
		return nil
	}
	d := r.cfg.Phase
	o := &outageResult{Window: recoveryWindow}
	p.Outage = o
	for _, f := range r.finished {
		if f.Name == phaseSteady {
			o.Steady = f.HitRate()
		}
	}
	o.Threshold = recoveryShare * o.Steady

	tctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { r.traffic(tctx, get, zipf) })

	sleep(ctx, d/4)
	c0, q0 := r.counts(), r.env.db.reads.Load()
	r.env.mr.Close()
	down := time.Now()
	sleep(ctx, d/2)
	if err := r.env.mr.Restart(); err != nil {
		return err
	}
	up := time.Now()
	o.DownAt, o.UpAt = r.since(down), r.since(up)
	o.Lib, o.DownQueries = r.counts().since(c0), r.env.db.reads.Load()-q0

	points := []point{r.point()}
	var recoveredAt time.Time
	for ctx.Err() == nil {
		sleep(ctx, recoveryPoll)
		now := r.point()
		points = append(points, now)
		// The newest poll at least a window older than now.
		from := points[0]
		for _, q := range points {
			if now.at.Sub(q.at) >= recoveryWindow {
				from = q
			}
		}
		o.EndHitRate = pct(now.hits-from.hits, now.requests-from.requests)
		after := now.at.Sub(up)
		if !o.Recovered && o.Threshold > 0 && now.at.Sub(from.at) >= recoveryWindow && now.requests > from.requests && o.EndHitRate >= o.Threshold {
			o.Recovered, o.Recovery, recoveredAt = true, after.Seconds(), now.at
		}
		if after >= r.cfg.MaxRecovery || (o.Recovered || o.Threshold <= 0) && after >= d/2 && now.at.Sub(recoveredAt) >= d/4 {
			o.End = r.rec.ended(from.at, now.at)
			break
		}
	}
	o.After = r.since(time.Now()) - o.UpAt
	// Requests still running when Redis came back count as during the
	// outage: wait for them.
	stop()
	wg.Wait()
	o.Down = r.rec.during(down, up)
	return nil
}
