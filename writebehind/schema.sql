-- The record of what a write-behind flusher applied: per counter (its Redis
-- prefix + name) and shard, the id of the last log entry applied. It is
-- updated in the transaction that applies the batch, so a batch replayed
-- after a crash finds its entries already recorded and skips them.
CREATE TABLE IF NOT EXISTS `writebehind_applied` (
  `counter` VARCHAR(191) NOT NULL,
  `shard` INT NOT NULL,
  `last_ms` BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- stream id of the last applied entry: milliseconds
  `last_seq` BIGINT UNSIGNED NOT NULL DEFAULT 0,  -- and sequence
  `entries` BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- entries applied so far
  `losses` BIGINT UNSIGNED NOT NULL DEFAULT 0,    -- times Redis was found to have lost applied entries
  `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (`counter`, `shard`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
