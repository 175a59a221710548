-- The outbox of cache invalidations (package github.com/f4df6ac3/cache/outbox).
-- One row per key to invalidate: Enqueue inserts it in the transaction that
-- changed the data; a Relay deletes it once Redis has the invalidation.
-- namespace is the loader's full Redis key prefix (Options.Prefix + name +
-- ":"); rows with namespace '' were written before that column existed
-- and are applied by loader name. outbox.Migrate adds the column to an
-- older table.
-- Works on MySQL 8.0+ and MariaDB 10.6+ (the Relay needs SKIP LOCKED).
-- outbox.Schema(name) returns this statement for another table name.
CREATE TABLE IF NOT EXISTS `cache_outbox` (
  id         BIGINT       NOT NULL AUTO_INCREMENT,
  loader     VARCHAR(191) NOT NULL,
  namespace  VARCHAR(512) NOT NULL DEFAULT '',
  cache_key  VARCHAR(767) NOT NULL,
  created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
