package cdc

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/redis/go-redis/v9"
)

// Options configure a Relay. The zero value is a MariaDB relay named
// "cache" with its checkpoint in the table cache_cdc_checkpoint of the
// DSN's database.
type Options struct {
	// Flavor is the source's kind: "mariadb" or "mysql".
	// default: "mariadb"
	Flavor string
	// Name names the relay: its checkpoint row and its lock. Relays with
	// the same Name and source elect one leader among them; the others
	// wait as standbys. Relays of different Names are independent.
	// default: "cache"
	Name string
	// ServerID is the id the relay registers with as a replica; it must
	// differ from every server's and every other replica's server_id.
	// default: a random id in [1<<30, 1<<31)
	ServerID uint32
	// CheckpointTable is the table (in the DSN's database) holding one
	// row per relay Name with the position the relay has applied up to.
	// It is created if missing.
	// default: "cache_cdc_checkpoint"
	CheckpointTable string
	// FilePositions makes the relay follow binlog file and offset instead
	// of GTIDs. MySQL without gtid_mode=ON always uses file positions.
	// WARNING: file positions do not survive a failover of the source to
	// another server; GTIDs do.
	// default: false (GTIDs where the server has them)
	FilePositions bool
	// FlushInterval bounds how long a key waits in a batch. A batch is
	// applied as soon as no binlog event waits to be read (so an idle
	// stream applies each transaction at once), when MaxBatch keys wait,
	// and at the latest FlushInterval after its first key was read (a
	// long transaction, or a stream that never pauses). One batch is
	// applied while the next gathers, so batches grow with Redis's
	// latency.
	// default: 2ms
	FlushInterval time.Duration
	// MaxBatch bounds the keys held in memory before they are applied,
	// also inside one large transaction: this and EventBuffer bound the
	// relay's memory, whatever the transaction's size.
	// default: 2048
	MaxBatch int
	// KeysPerCall bounds the keys of one InvalidateVersions call (one
	// pipeline, which must fit the Loader's RedisTimeout). A call that
	// fails is retried with half as many keys, down to one.
	// default: 256
	KeysPerCall int
	// CallsInFlight is how many InvalidateVersions calls of one batch run
	// at the same time.
	// default: 4
	CallsInFlight int
	// Reinvalidate, if set, invalidates every key without a version floor
	// (its rule has no VersionColumn) a second time this long after the
	// first: a reader that loaded the old row inside the commit-visibility
	// window and cached it is corrected then. It bounds how long such a
	// row can stay stale to about Reinvalidate; choose it above the
	// commit latency (tens of milliseconds is plenty on local disks).
	// Best effort: repeats are not checkpointed, and at most 4096 batches
	// of them wait (the rest are dropped and counted in Stats).
	// default: 0 (off)
	Reinvalidate time.Duration
	// EventBuffer is how many binlog events the reader may decode ahead
	// of the relay (each at most max_allowed_packet, typically 8KB per
	// rows event).
	// default: 64
	EventBuffer int
	// CheckpointInterval is the least time between two checkpoint writes.
	// A crash replays at most about this much of the binlog (duplicate
	// invalidations are harmless).
	// default: 1s
	CheckpointInterval time.Duration
	// ApplyTimeout bounds one InvalidateVersions call; a failed or timed
	// out call is retried (after 10ms, doubling up to 100ms) until it
	// succeeds: the relay waits rather than skip an invalidation.
	// default: 5s
	ApplyTimeout time.Duration
	// LockPoll is how long a standby waits for the lock per attempt (and
	// how often the leader checks it still holds it). A standby takes
	// over about LockPoll after the leader's connection closed.
	// default: 500ms
	LockPoll time.Duration
	// MaxBackoff bounds the wait between reconnects to the source. (A
	// failed invalidation is retried after 10ms, doubling up to 100ms.)
	// default: 5s
	MaxBackoff time.Duration
	// Heartbeat is the period at which the source sends a heartbeat on an
	// idle binlog stream; a stream silent for 5 heartbeats is reconnected.
	// default: 1s
	Heartbeat time.Duration
	// Logger receives the relay's and go-mysql's messages.
	// default: slog.Default()
	Logger *slog.Logger
	// StatusRedis, if set, is where the relay publishes its status for
	// `cachectl health -prefix <StatusPrefix>`: every StatusInterval the
	// leader writes a small JSON record (host, pid, applied and server
	// positions, transactions behind, last event time, checkpoint age,
	// counters and rates) at StatusPrefix + "cdc-relay:" + Name, expiring
	// after five intervals, and every relay of the Name, standbys included,
	// a heartbeat. Give it the Loaders' client. A failed publish is logged
	// (at most once a minute) and never holds up the relay.
	// default: nil (nothing published)
	StatusRedis redis.Cmdable
	// StatusPrefix prefixes the status keys: the Loaders' Options.Prefix,
	// which cachectl health is given as -prefix.
	// default: ""
	StatusPrefix string
	// StatusInterval is how often the status is published.
	// default: 1s
	StatusInterval time.Duration
}

// settings are Options validated and defaulted.
type settings struct {
	flavor             string
	name               string
	serverID           uint32
	table              string
	filePositions      bool
	flushInterval      time.Duration
	maxBatch           int
	keysPerCall        int
	callsInFlight      int
	reinvalidate       time.Duration
	eventBuffer        int
	checkpointInterval time.Duration
	applyTimeout       time.Duration
	lockPoll           time.Duration
	maxBackoff         time.Duration
	heartbeat          time.Duration
	logger             *slog.Logger
	statusRedis        redis.Cmdable
	statusPrefix       string
	statusInterval     time.Duration
}

// identifier is what the relay accepts as a table name without quoting
// doubts.
var identifier = regexp.MustCompile(`^[A-Za-z0-9_$]{1,64}$`)

func (o *Options) settings() (settings, error) {
	if o == nil {
		o = &Options{}
	}
	s := settings{
		flavor:             or(o.Flavor, mysql.MariaDBFlavor),
		name:               or(o.Name, "cache"),
		serverID:           o.ServerID,
		table:              or(o.CheckpointTable, "cache_cdc_checkpoint"),
		filePositions:      o.FilePositions,
		flushInterval:      or(o.FlushInterval, 2*time.Millisecond),
		maxBatch:           or(o.MaxBatch, 2048),
		keysPerCall:        or(o.KeysPerCall, 256),
		callsInFlight:      or(o.CallsInFlight, 4),
		reinvalidate:       o.Reinvalidate,
		eventBuffer:        or(o.EventBuffer, 64),
		checkpointInterval: or(o.CheckpointInterval, time.Second),
		applyTimeout:       or(o.ApplyTimeout, 5*time.Second),
		lockPoll:           or(o.LockPoll, 500*time.Millisecond),
		maxBackoff:         or(o.MaxBackoff, 5*time.Second),
		heartbeat:          or(o.Heartbeat, time.Second),
		logger:             o.Logger,
		statusRedis:        o.StatusRedis,
		statusPrefix:       o.StatusPrefix,
		statusInterval:     or(o.StatusInterval, time.Second),
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.serverID == 0 {
		s.serverID = 1<<30 + rand.Uint32N(1<<30)
	}
	if s.flavor != mysql.MariaDBFlavor && s.flavor != mysql.MySQLFlavor {
		return s, fmt.Errorf("cdc: Flavor %q: want %q or %q", s.flavor, mysql.MariaDBFlavor, mysql.MySQLFlavor)
	}
	if !identifier.MatchString(s.table) {
		return s, fmt.Errorf("cdc: CheckpointTable %q: want letters, digits, _ or $", s.table)
	}
	if len(s.name) > 191 {
		return s, errors.New("cdc: Name longer than 191 bytes")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"FlushInterval", s.flushInterval}, {"CheckpointInterval", s.checkpointInterval},
		{"ApplyTimeout", s.applyTimeout}, {"LockPoll", s.lockPoll},
		{"MaxBackoff", s.maxBackoff}, {"Heartbeat", s.heartbeat}, {"Reinvalidate", s.reinvalidate},
		{"StatusInterval", s.statusInterval},
	} {
		if d.v < 0 {
			return s, fmt.Errorf("cdc: %s is negative", d.name)
		}
	}
	if s.maxBatch < 0 || s.eventBuffer < 0 || s.keysPerCall < 0 || s.callsInFlight < 0 {
		return s, errors.New("cdc: MaxBatch, KeysPerCall, CallsInFlight and EventBuffer must not be negative")
	}
	return s, nil
}

func or[V comparable](v, def V) V {
	var zero V
	if v == zero {
		return def
	}
	return v
}
