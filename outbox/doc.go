// Package outbox makes cache invalidations durable with a transactional
// outbox: the keys to invalidate are written to a MySQL table in the same
// transaction as the data change, and a [Relay] applies them to Redis
// afterwards. A writer that dies between its COMMIT and its Redis call — a
// crash, a SIGKILL, a deploy — no longer leaves a stale entry until the TTL:
// the committed row survives, and a relay (in any process) invalidates the
// key.
//
//	ob, err := outbox.New(db, nil) // table "cache_outbox"; create it with outbox.Migrate
//
//	// The write: the data change and its invalidation commit together.
//	tx, err := db.BeginTx(ctx, nil)
//	_, err = tx.ExecContext(ctx, "UPDATE users SET name = ?, version = version + 1 WHERE id = ?", name, 42)
//	err = ob.Enqueue(ctx, tx, users, "42") // users is a *cache.Loader
//	err = tx.Commit()
//	_ = users.Invalidate(ctx, "42") // optional fast path; the relay repeats it
//
//	// In the background, in one or more processes:
//	relay, err := ob.NewRelay([]outbox.Invalidator{users, orders}, nil)
//	go relay.Run(ctx)
//
// Invalidating right after the commit, as above, keeps read-your-writes as
// fast as before; the outbox row is the guarantee behind it. Without that
// call a Get may serve the old value until a relay gets to the row (its
// PollInterval, 100ms by default, while Redis is up).
//
// # Guarantees
//
//   - Atomic with the data: Enqueue writes in the caller's *sql.Tx; a
//     rollback (or a connection lost before COMMIT) records nothing.
//   - At least once: a row is deleted, in the same transaction that locked
//     it, only after Invalidate succeeded; a relay that fails or dies
//     leaves it for the next. Invalidation is idempotent, so repeats are
//     harmless.
//   - Several relays: each batch is SELECT … ORDER BY id LIMIT n FOR UPDATE
//     SKIP LOCKED, so concurrent relays share the rows without waiting for
//     each other; a row is applied by one at a time.
//   - Redis down: Invalidate fails, the rows stay, and Run parks that loader
//     with exponential backoff (RelayOptions.MinBackoff to MaxBackoff) and
//     catches up when Redis is back. The cache's own guarantees then hold: a
//     Get starting after the relay's Invalidate never serves the old value.
//   - No head-of-line blocking: while one loader's Invalidate fails (its
//     Redis down), its rows are skipped and the other loaders' rows keep
//     being applied, even when the failing loader's rows are the oldest and
//     fill whole batches.
//   - Shared tables: each row names its loader's namespace, the loader's
//     full Redis key prefix (Options.Prefix + name + ":", see [Namespace]).
//     Several services may share one table, each relaying its own loaders:
//     two services with a loader "user" under different Prefixes never
//     take each other's rows.
//
// WARNING: between the COMMIT and the relay's Invalidate, Gets may serve the
// old value (at most the relay's lag, see [Stats]). The outbox bounds how
// long an entry can stay stale after a committed write; it does not remove
// that window.
//
// # Schema
//
// The table is in schema.sql (embedded; [Schema] returns it for any table
// name, [Migrate] runs it). It works on MySQL 8.0+ and MariaDB 10.6+, the
// first versions with SKIP LOCKED. Relays use READ COMMITTED transactions so
// that their locking reads take no gap locks: writers' Enqueues never wait
// for a relay.
//
// # Upgrading a table without the namespace column
//
// Tables created by earlier versions have no namespace column. [Migrate]
// adds it (one ALTER TABLE … ADD COLUMN, instant on MySQL 8.0 and MariaDB
// 10.6; [MigrationSQL] prints it for your own migration tool); it is
// idempotent and safe to run from several processes. Rows already in the
// table get namespace ” and keep working: a relay applies such a row to
// every one of its loaders with the row's loader name, as before. The
// order of a rolling upgrade:
//
//  1. Run Migrate (old writers keep inserting; their rows get ”).
//  2. Deploy the new version everywhere. Old relays still select by loader
//     name alone and may take another service's rows; until the last one is
//     gone, the old behaviour (and its risk) stays.
//  3. Once the rows with namespace ” are gone (SELECT COUNT(*) … WHERE
//     namespace = ”), every row is applied by its own service only.
//
// # Metrics
//
// [Relay.Stats] returns counters (rows applied, failed attempts) and gauges
// (pending rows, unowned rows, lag: the age of the oldest pending row,
// parked loaders). With RelayOptions.Registerer they are also exported to
// Prometheus as cache_outbox_applied_total, cache_outbox_errors_total,
// cache_outbox_pending_rows, cache_outbox_unowned_rows,
// cache_outbox_lag_seconds and cache_outbox_parked_loaders, labelled by
// table.
//
// # Tests
//
// Besides the scenario tests, a seeded fault campaign (campaign_test.go)
// runs two services on one table with several loaders each, kills relays
// at random (between an Invalidate and its commit too) and takes one
// loader's Redis down through a fault proxy, and checks that no committed
// invalidation is lost. CI runs a short one; -outbox.campaign=2m runs a
// longer one, -outbox.seed=N replays one. Figures: README.md.
package outbox
