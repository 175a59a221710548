-- Schema and seed rows for examples/mysql (MySQL 8 / MariaDB 10.5+).
-- Safe to run more than once.
--
-- version is the row's cache version (cache.Versioned): every UPDATE must
-- bump it (SET ..., version = version + 1), and it must never go backwards
-- for an id, also across delete and re-insert.

CREATE TABLE IF NOT EXISTS users (
    id      BIGINT       NOT NULL PRIMARY KEY,
    name    VARCHAR(255) NOT NULL,
    email   VARCHAR(255) NOT NULL,
    version BIGINT       NOT NULL DEFAULT 1
);

INSERT IGNORE INTO users (id, name, email) VALUES
    (1, 'Ada Lovelace',    'ada@example.com'),
    (2, 'Alan Turing',     'alan@example.com'),
    (3, 'Grace Hopper',    'grace@example.com'),
    (4, 'Edsger Dijkstra', 'edsger@example.com');
