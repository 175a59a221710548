package main

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// tierStreamWait bounds how long the tier's run waits, before its first
// phase, for every process's invalidation streams to be up.
const tierStreamWait = 5 * time.Second

// tierUnavailable says why the in-process tier cannot run against e's
// Redis, or "" if it can: it turns CLIENT TRACKING on for a connection of
// its own, as the tier's invalidation stream does, and off again.
func tierUnavailable(ctx context.Context, e *env, prefix string) string {
	rdb := redis.NewClient(&redis.Options{Addr: e.addr, Protocol: 2})
	defer rdb.Close()
	cn := rdb.Conn()
	defer cn.Close()
	// The stream redirects the invalidations to its own connection, by id.
	id, err := cn.ClientID(ctx).Result()
	if err == nil {
		err = cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX", prefix).Err()
	}
	if err == nil {
		_ = cn.Do(ctx, "CLIENT", "TRACKING", "off").Err()
		return ""
	}
	if e.mr != nil {
		return fmt.Sprintf("the in-process tier needs CLIENT TRACKING (and CLIENT ID), which the embedded miniredis lacks (it answered %q); run with -redis and the address of a Redis 6 or later, e.g. -redis 127.0.0.1:6379", err.Error())
	}
	return fmt.Sprintf("the in-process tier needs CLIENT TRACKING (and CLIENT ID), which the Redis at %s refused (%q)", e.addr, err.Error())
}

// waitStreams waits until every process's invalidation streams are up, or
// tierStreamWait has passed; it says why not, or "".
func waitStreams(ctx context.Context, procs []users) string {
	up := func() bool {
		for _, p := range procs {
			if l, ok := p.(*library); !ok || !l.streamsUp() {
				return false
			}
		}
		return true
	}
	if waitFor(ctx, tierStreamWait, up) {
		return ""
	}
	return fmt.Sprintf("the in-process tier's invalidation streams were not all up %v after the processes started", tierStreamWait)
}

// skippedRun is the run of impl when it cannot run at all: every phase
// skipped for the same reason.
func skippedRun(impl, reason string) runResult {
	r := runResult{Impl: impl, Skipped: reason}
	for _, name := range phaseNames {
		p := phaseResult{Name: name, Skipped: reason}
		p.Sentence = explain(impl, p, r.Phases)
		r.Phases = append(r.Phases, p)
	}
	return r
}
