// Package relaystatus is the status a binlog relay (package cdc) publishes
// in Redis and `cachectl health` reads: the one definition of its keys,
// its record and the relay's leader lock name, shared by the cdc module
// (the writer) and the core's cachectl (the reader), so that neither
// imports the other.
//
// Layout, under the Loaders' Options.Prefix P:
//
//	P + "cdc-relays"                    sorted set: relay Name → when its leader last published (Unix ms)
//	P + "cdc-relay:" + Name             string: the leader's Status as JSON, expiring after TTL(interval)
//	P + "cdc-relay-instances:" + Name   sorted set: "host/pid/token" of every running relay of Name → last seen (Unix ms)
//
// The index has no TTL: a Name whose status key expired is a relay that
// stopped publishing (no leader runs, or it cannot reach Redis), and
// cachectl says since when.
package relaystatus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// IndexKey is the sorted set of the relay Names publishing under prefix.
func IndexKey(prefix string) string { return prefix + "cdc-relays" }

// StatusKey is where the leader of relay name publishes its Status.
func StatusKey(prefix, name string) string { return prefix + "cdc-relay:" + name }

// InstancesKey is the sorted set of the running relays of name, leader and
// standbys.
func InstancesKey(prefix, name string) string { return prefix + "cdc-relay-instances:" + name }

// TTL is how long a published status lives: five publishing intervals,
// at least 5s. A status older than that is gone, and its relay is
// reported as not running.
func TTL(interval time.Duration) time.Duration { return max(5*time.Second, 5*interval) }

// LockName is the GET_LOCK name of the relays called name (64 bytes at
// most): the leader's connection holds it.
func LockName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "cache_cdc:" + hex.EncodeToString(sum[:12])
}

// Status is what a relay's leader publishes every interval.
type Status struct {
	Relay    string `json:"relay"`    // the relay's Name
	Host     string `json:"host"`     // os.Hostname of the leader
	PID      int    `json:"pid"`      // its process id
	Source   string `json:"source"`   // the binlog's server (host:port of the DSN)
	Flavor   string `json:"flavor"`   // "mariadb" or "mysql"
	Database string `json:"database"` // the DSN's database (holds the checkpoint table)
	// CheckpointTable is the table holding the relay's checkpoint row.
	CheckpointTable string `json:"checkpoint_table"`
	// LeaderSince is when this leader's term began.
	LeaderSince time.Time `json:"leader_since"`
	// PublishedAt is when the record was written; IntervalMs how often
	// the leader writes it.
	PublishedAt time.Time `json:"published_at"`
	IntervalMs  int64     `json:"interval_ms"`

	// Applied is the position up to which every invalidation is applied
	// ("gtid:<set>" or "file:<name>:<offset>"); Checkpoint the last one
	// stored, at CheckpointAt.
	Applied      string    `json:"applied"`
	Checkpoint   string    `json:"checkpoint"`
	CheckpointAt time.Time `json:"checkpoint_at"`
	// Server is the server's position at the relay's last poll (every
	// second), and Behind how many of its transactions are not applied
	// (MariaDB GTIDs only; -1 where unknown).
	Server string `json:"server"`
	Behind int64  `json:"behind"`
	// EventTime is the timestamp of the last binlog event read (whole
	// seconds; zero before the first). Now minus it is the lag while
	// events flow; on an idle stream it grows with nothing to apply (read
	// it with Behind).
	EventTime time.Time `json:"event_time"`
	// EventLagMs and CheckpointAgeMs are now − EventTime and now −
	// CheckpointAt by the relay's clock at PublishedAt (-1: no event yet),
	// for readers whose clock may differ from the relay's.
	EventLagMs      int64 `json:"event_lag_ms"`
	CheckpointAgeMs int64 `json:"checkpoint_age_ms"`

	// Totals since the relay process started.
	Events        uint64 `json:"events"`
	Rows          uint64 `json:"rows"`
	Transactions  uint64 `json:"transactions"`
	Invalidations uint64 `json:"invalidations"`
	ApplyErrors   uint64 `json:"apply_errors"`
	Reconnects    uint64 `json:"reconnects"`
	Statements    uint64 `json:"statements"`
	// Rates over the last publishing interval (0 in the first record of
	// a term).
	EventsPerSec        float64 `json:"events_per_sec"`
	InvalidationsPerSec float64 `json:"invalidations_per_sec"`
	ApplyErrorsPerSec   float64 `json:"apply_errors_per_sec"`

	// Error is set in the record of a relay that stopped on an error no
	// retry cures (its Run returned it: server settings, a rule that
	// cannot be applied, a closed Loader), at StoppedAt. Such a record
	// lives StoppedTTL, or until a leader of the Name publishes again.
	Error     string    `json:"error,omitempty"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
}

// StoppedTTL is how long the record of a relay that stopped on an error
// stays.
const StoppedTTL = 24 * time.Hour

// Instance is one running relay of a Name, as its last heartbeat says.
type Instance struct {
	ID       string    `json:"id"` // "host/pid/token"
	LastSeen time.Time `json:"last_seen"`
}

// InstanceID is the member a relay adds to the instances set: its host,
// process id and a token that tells the relays of one process apart.
func InstanceID(host string, pid int, token string) string {
	return host + "/" + strconv.Itoa(pid) + "/" + token
}

// Publish writes a heartbeat of instance id of relay name, and st when the
// instance leads (st nil: a standby). interval is the publishing period:
// the keys expire after TTL(interval) without a new heartbeat; the index
// keeps the Name.
func Publish(ctx context.Context, rdb redis.Cmdable, prefix, name, id string, st *Status, interval time.Duration) error {
	now := time.Now()
	ttl := TTL(interval)
	ms := float64(now.UnixMilli())
	ik := InstancesKey(prefix, name)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if st != nil {
			b, err := json.Marshal(st)
			if err != nil {
				return err
			}
			p.Set(ctx, StatusKey(prefix, name), b, ttl)
			p.ZAdd(ctx, IndexKey(prefix), redis.Z{Score: ms, Member: name})
		}
		p.ZAdd(ctx, ik, redis.Z{Score: ms, Member: id})
		p.ZRemRangeByScore(ctx, ik, "-inf", "("+strconv.FormatInt(now.Add(-ttl).UnixMilli(), 10))
		p.PExpire(ctx, ik, ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("relay status: %w", err)
	}
	return nil
}

// PublishStopped writes the record of a relay of name that stopped on an
// error (st.Error set); it lives StoppedTTL.
func PublishStopped(ctx context.Context, rdb redis.Cmdable, prefix, name string, st *Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, StatusKey(prefix, name), b, StoppedTTL)
		p.ZAdd(ctx, IndexKey(prefix), redis.Z{Score: float64(time.Now().UnixMilli()), Member: name})
		return nil
	})
	if err != nil {
		return fmt.Errorf("relay status: %w", err)
	}
	return nil
}

// Leave removes instance id from the instances of relay name (a relay that
// stops cleanly). The status key of a leader that stops is left to
// expire.
func Leave(ctx context.Context, rdb redis.Cmdable, prefix, name, id string) error {
	return rdb.ZRem(ctx, InstancesKey(prefix, name), id).Err()
}

// Relay is what Read finds about one relay Name.
type Relay struct {
	Name string `json:"name"`
	// LastPublished is when a leader of the Name last published (from
	// the index).
	LastPublished time.Time `json:"last_published"`
	// Status is the leader's last record, nil when it expired: no leader
	// has published for TTL(interval).
	Status *Status `json:"status"`
	// Instances are the relays of the Name seen within TTL, leader
	// included, by ID.
	Instances []Instance `json:"instances"`
}

// Read returns the relays that published under prefix, sorted by Name.
func Read(ctx context.Context, rdb redis.Cmdable, prefix string) ([]Relay, error) {
	names, err := rdb.ZRangeWithScores(ctx, IndexKey(prefix), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("relay status index %s: %w", IndexKey(prefix), err)
	}
	out := make([]Relay, 0, len(names))
	for _, z := range names {
		name, _ := z.Member.(string)
		r := Relay{Name: name, LastPublished: time.UnixMilli(int64(z.Score)), Instances: []Instance{}}
		b, err := rdb.Get(ctx, StatusKey(prefix, name)).Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, fmt.Errorf("relay status %s: %w", StatusKey(prefix, name), err)
		default:
			var st Status
			if err := json.Unmarshal(b, &st); err != nil {
				return nil, fmt.Errorf("relay status %s: %w", StatusKey(prefix, name), err)
			}
			r.Status = &st
		}
		// Heartbeats older than the TTL are dropped by the next writer;
		// skip them here too.
		since := strconv.FormatInt(time.Now().Add(-TTL(intervalOf(r.Status))).UnixMilli(), 10)
		ins, err := rdb.ZRangeByScoreWithScores(ctx, InstancesKey(prefix, name), &redis.ZRangeBy{Min: since, Max: "+inf"}).Result()
		if err != nil {
			return nil, fmt.Errorf("relay instances %s: %w", InstancesKey(prefix, name), err)
		}
		for _, z := range ins {
			id, _ := z.Member.(string)
			r.Instances = append(r.Instances, Instance{ID: id, LastSeen: time.UnixMilli(int64(z.Score))})
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Relay) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// intervalOf is st's publishing interval (0 when unknown).
func intervalOf(st *Status) time.Duration {
	if st == nil {
		return 0
	}
	return time.Duration(st.IntervalMs) * time.Millisecond
}

// Behind counts the transactions of MariaDB GTID set server that are not
// in applied ("d-s-n,..." per replication domain, sequence numbers
// consecutive within a domain); ok is false when either is not a MariaDB
// GTID set.
func Behind(applied, server string) (n int64, ok bool) {
	a, ok1 := mariaSeqs(applied)
	s, ok2 := mariaSeqs(server)
	if !ok1 || !ok2 {
		return 0, false
	}
	for domain, seq := range s {
		if seq > a[domain] {
			n += int64(seq - a[domain])
		}
	}
	return n, true
}

// mariaSeqs reads a MariaDB GTID set into domain → sequence number.
func mariaSeqs(set string) (map[uint64]uint64, bool) {
	out := map[uint64]uint64{}
	if set = strings.TrimSpace(set); set == "" {
		return out, true
	}
	for g := range strings.SplitSeq(set, ",") {
		parts := strings.Split(strings.TrimSpace(g), "-")
		if len(parts) != 3 {
			return nil, false
		}
		d, err1 := strconv.ParseUint(parts[0], 10, 32)
		_, err2 := strconv.ParseUint(parts[1], 10, 32)
		seq, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, false
		}
		out[d] = max(out[d], seq)
	}
	return out, true
}
