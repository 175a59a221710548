package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Options configure an Outbox. A nil *Options means all defaults.
type Options struct {
	// Table is the outbox table, optionally qualified by its database
	// ("db.cache_outbox"). Create it with Migrate or schema.sql.
	// default: DefaultTable ("cache_outbox")
	Table string
}

// Outbox records cache invalidations in a MySQL table inside the caller's
// transactions (Enqueue) and builds the Relays that apply them (NewRelay).
// An Outbox is safe for concurrent use.
type Outbox struct {
	db     *sql.DB
	table  string // as configured, for messages and metric labels
	quoted string // backquoted, for statements
}

// New returns an Outbox over the table named in opts. It does not touch the
// database; create the table with Migrate.
func New(db *sql.DB, opts *Options) (*Outbox, error) {
	if db == nil {
		return nil, errors.New("outbox: nil *sql.DB")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	table := tableOrDefault(o.Table)
	quoted, err := quoteTable(table)
	if err != nil {
		return nil, err
	}
	return &Outbox{db: db, table: table, quoted: quoted}, nil
}

// Table returns the name of the outbox table.
func (o *Outbox) Table() string { return o.table }

// Target is the cache namespace an outbox row is for: what Enqueue needs of
// a Loader. *cache.Loader[T] satisfies it.
type Target interface {
	// Name is the loader's name (recorded for operators and for rows
	// written before the namespace column existed).
	Name() string
	// Key returns the full Redis key of key; Key("") — Options.Prefix +
	// name + ":" — is the namespace a row names. A Target may instead
	// have a method Namespace() string, which is then used.
	Key(key string) string
}

// Namespace returns the namespace rows for t name: t.Namespace() if t has
// that method, else t.Key(""), the full Redis key prefix of t's entries.
// Two Loaders named alike under different Options.Prefix values (two
// services sharing one outbox table, each with a loader "user") have
// different namespaces, so each service's relay takes only its own rows.
func Namespace(t Target) string {
	if n, ok := t.(interface{ Namespace() string }); ok {
		return n.Namespace()
	}
	return t.Key("")
}

// insertChunk is how many rows one INSERT carries at most: 3 placeholders a
// row stays far below MySQL's 65,535 per statement.
const insertChunk = 1000

// Enqueue records that the given keys of the cache Loader t must be
// invalidated once tx commits. It writes them in tx — one multi-row INSERT,
// or one per 1,000 keys — so they commit or roll back with the data change
// made in the same transaction. A Relay holding a Loader of the same
// namespace (see [Namespace]) then applies them to Redis. Call it before
// tx.Commit; with no keys it does nothing.
//
// Enqueue takes a *sql.Tx on purpose: an invalidation recorded outside the
// data change's transaction could be lost (or applied) independently of it.
//
// The loader name may have up to 191 characters, the namespace up to 512
// and each key up to 767; none may be empty. Invalid arguments are reported
// before anything is written.
func (o *Outbox) Enqueue(ctx context.Context, tx *sql.Tx, t Target, keys ...string) error {
	if tx == nil {
		return errors.New("outbox: Enqueue needs a transaction")
	}
	if t == nil {
		return errors.New("outbox: Enqueue needs a Target (a cache Loader)")
	}
	loader, ns := t.Name(), Namespace(t)
	if err := checkNames(loader, ns); err != nil {
		return err
	}
	for _, k := range keys {
		if k == "" || utf8.RuneCountInString(k) > maxKeyLen || !utf8.ValidString(k) {
			return fmt.Errorf("outbox: invalid key %q (1 to %d characters of UTF-8)", k, maxKeyLen)
		}
	}
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), insertChunk)]
		keys = keys[len(chunk):]
		var b strings.Builder
		b.WriteString("INSERT INTO ")
		b.WriteString(o.quoted)
		b.WriteString(" (loader, namespace, cache_key) VALUES ")
		args := make([]any, 0, 3*len(chunk))
		for i, k := range chunk {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?,?,?)")
			args = append(args, loader, ns, k)
		}
		if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("outbox: enqueue %d keys of %s: %w", len(chunk), ns, err)
		}
	}
	return nil
}

// checkNames validates a loader's name and namespace against the columns.
func checkNames(loader, ns string) error {
	if loader == "" || utf8.RuneCountInString(loader) > maxLoaderLen || !utf8.ValidString(loader) {
		return fmt.Errorf("outbox: invalid loader name %q (1 to %d characters of UTF-8)", loader, maxLoaderLen)
	}
	if ns == "" || utf8.RuneCountInString(ns) > maxNamespaceLen || !utf8.ValidString(ns) {
		return fmt.Errorf("outbox: invalid namespace %q of loader %s (1 to %d characters of UTF-8)", ns, loader, maxNamespaceLen)
	}
	return nil
}
