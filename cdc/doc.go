// Package cdc invalidates cache entries from the MySQL/MariaDB binary log:
// a row changed behind the cache's back (manual SQL, a migration, another
// service) stops being served within milliseconds, and no change is lost
// across crashes of the relay, of Redis or of the database.
//
// A [Relay] reads the binlog as a replica does (go-mysql's
// replication.BinlogSyncer), maps each changed row to keys by its
// [Rule]s, and calls InvalidateVersions on the rules' [Target]s —
// [github.com/f4df6ac3/cache.Loader] values:
//
//	users := cache.Must(cache.New(rdb, "user", loadUser, nil))
//	relay, err := cdc.New("cdc@tcp(db:3306)/app", []cdc.Rule{{
//		Table: "users", Target: users, KeyColumn: "id", VersionColumn: "version",
//	}}, nil)
//	...
//	go relay.Run(ctx) // in every process that may carry it: one leads
//
// # What it guarantees
//
//   - At least once. The checkpoint (the GTID set, or binlog file and
//     offset where GTIDs are off) is written, to a table of the source
//     database, only after every invalidation before it was applied. A
//     relay that restarts replays from it; a repeated invalidation is
//     harmless. The very first start, with no checkpoint, begins at the
//     server's current position: changes made before it are not replayed.
//   - Version floors. An INSERT or UPDATE invalidates the key with the
//     after-image's version as floor; a DELETE (and the old key of an
//     UPDATE that moved the row) with the before-image's version + 1. No
//     fill of an older version lands afterwards. This closes the
//     commit-visibility race: a binlog reader can see a transaction before
//     its commit is visible to other sessions, so a reader that loads right
//     after the invalidation may still read the old row; the floor refuses
//     to cache it.
//   - One leader. Relays of the same [Options].Name elect a leader with
//     MySQL GET_LOCK; the others wait as standbys and take over when the
//     leader's connection closes (tens of milliseconds after a SIGKILL on
//     the same network). The checkpoint is written on the lock's own
//     connection, so a relay that lost the lock cannot write one.
//   - It waits rather than skip. When an invalidation fails (Redis down,
//     the Loader's breaker open), the relay retries it with backoff and the
//     checkpoint stays put; the binlog waits on the server.
//   - Schema from the binlog. Column names and the primary key come from
//     the table map events (binlog_row_metadata=FULL), never from the
//     current schema, so a DDL between events cannot shift columns.
//
// Run refuses (with [ErrSettings]) a server without a binary log, with
// binlog_format other than ROW, binlog_row_image or binlog_row_metadata
// other than FULL, or a user without REPLICATION SLAVE.
//
// WARNING: for types without a version (Rule.VersionColumn empty, T not
// cache.Versioned) the visibility race stays open: a reader that loads
// within the window between the binlog write and the commit becoming
// visible (microseconds to a few milliseconds; longer under a
// disk-bound group commit) can cache the old row until its TTL. Give such
// rows a version column (a counter, or an updated-at in microseconds), or
// set Options.Reinvalidate: their keys are invalidated a second time after
// that delay, which bounds the staleness to about the delay.
//
// WARNING: a session that sets binlog_format=STATEMENT (or MIXED) writes
// statements, not rows: the relay cannot know their keys. It counts them
// (Stats.Statements) and logs them.
//
// WARNING: if the binlog is purged past the checkpoint (the relay was down
// longer than expire_logs_days / binlog_expire_logs_seconds), Run returns
// ErrSettings: invalidations were lost. Expire the cached keys, then delete
// the relay's checkpoint row.
//
// Memory is bounded whatever a transaction's size: the reader decodes at
// most Options.EventBuffer events ahead, and the relay holds at most two
// batches of Options.MaxBatch keys (one being applied, one gathering): it
// applies them also in the middle of a transaction (its rows are committed:
// they are in the binlog); only the checkpoint waits for the transaction's
// end. Rows events of tables without a rule are not decoded.
//
// Operations: [Relay.Stats] and [Relay.Collector] (Prometheus) carry the
// state, counters and lags. With [Options].StatusRedis the leader also
// publishes them every StatusInterval in a small expiring Redis record
// under the Loaders' prefix, with a heartbeat from every relay of the
// Name, which `cachectl health -prefix <prefix>` prints (with -dsn it also
// reads the checkpoint table and who holds the leader lock).
package cdc
