package outbox

import (
	"context"
	"database/sql"
	_ "embed" // schema.sql
	"fmt"
	"regexp"
	"strings"
)

// DefaultTable is the outbox table used when none is named.
const DefaultTable = "cache_outbox"

// schemaSQL is the CREATE TABLE statement for DefaultTable.
//
//go:embed schema.sql
var schemaSQL string

// Column limits of schema.sql, in characters.
const (
	maxLoaderLen    = 191
	maxNamespaceLen = 512
	maxKeyLen       = 767
)

// addNamespace is the migration of a table created before the namespace
// column: old rows get ” and keep being applied by loader name. Added
// last, so that MySQL 8.0 and MariaDB 10.6 add it instantly (no copy).
const addNamespace = "ALTER TABLE %s ADD COLUMN namespace VARCHAR(512) NOT NULL DEFAULT ''"

// tableName matches an unquoted MySQL identifier, optionally qualified by a
// database name. Quoting is done here, so names needing quotes are refused.
var tableName = regexp.MustCompile(`^([A-Za-z0-9_$]{1,64}\.)?[A-Za-z0-9_$]{1,64}$`)

// quoteTable validates table ("" means DefaultTable) and returns it quoted
// with backticks, ready to be put in a statement.
func quoteTable(table string) (string, error) {
	if table == "" {
		table = DefaultTable
	}
	if !tableName.MatchString(table) {
		return "", fmt.Errorf("outbox: invalid table name %q (want [db.]name of letters, digits, _ and $)", table)
	}
	return "`" + strings.ReplaceAll(table, ".", "`.`") + "`", nil
}

// Schema returns the CREATE TABLE IF NOT EXISTS statement (the embedded
// schema.sql, comments included) for an outbox table named table; "" means
// DefaultTable. The name may be qualified ("db.cache_outbox"); it must
// consist of letters, digits, '_' and '$'.
//
// The table works on MySQL 8.0+ and MariaDB 10.6+: an AUTO_INCREMENT id
// giving the relay order, the loader name (VARCHAR(191)), its namespace
// (the full Redis key prefix, VARCHAR(512)), the cache key (VARCHAR(767),
// compared as bytes) and the insertion time, whose age is the relay's lag.
func Schema(table string) (string, error) {
	q, err := quoteTable(table)
	if err != nil {
		return "", err
	}
	return strings.Replace(schemaSQL, "`"+DefaultTable+"`", q, 1), nil
}

// MigrationSQL returns the statement that brings an outbox table created
// by an earlier version (without the namespace column) up to date, for
// those who run schema changes with their own tools; Migrate runs it when
// needed.
func MigrationSQL(table string) (string, error) {
	q, err := quoteTable(table)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(addNamespace, q), nil
}

// Migrate creates the outbox table named table ("" means DefaultTable) if
// it does not exist, and adds the namespace column to a table created
// before it (see MigrationSQL; the rows already there keep working). It
// is idempotent and safe to run from several processes at once.
func Migrate(ctx context.Context, db *sql.DB, table string) error {
	stmt, err := Schema(table)
	if err != nil {
		return err
	}
	// One statement; the trailing ';' is for the mysql client only.
	stmt = strings.TrimSuffix(strings.TrimSpace(stmt), ";")
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("outbox: creating table %s: %w", tableOrDefault(table), err)
	}
	has, err := hasNamespace(ctx, db, table)
	if err != nil || has {
		return err
	}
	alter, _ := MigrationSQL(table)
	if _, err := db.ExecContext(ctx, alter); err != nil {
		// Another process may have added it meanwhile (a duplicate column
		// error, told apart without depending on the driver).
		if has, _ := hasNamespace(ctx, db, table); has {
			return nil
		}
		return fmt.Errorf("outbox: adding the namespace column to %s: %w", tableOrDefault(table), err)
	}
	return nil
}

// hasNamespace reports whether the table has the namespace column.
func hasNamespace(ctx context.Context, db *sql.DB, table string) (bool, error) {
	q, err := quoteTable(table)
	if err != nil {
		return false, err
	}
	rows, err := db.QueryContext(ctx, "SHOW COLUMNS FROM "+q+" LIKE 'namespace'")
	if err != nil {
		return false, fmt.Errorf("outbox: reading the columns of %s: %w", tableOrDefault(table), err)
	}
	defer rows.Close()
	has := rows.Next()
	return has, rows.Err()
}

func tableOrDefault(table string) string {
	if table == "" {
		return DefaultTable
	}
	return table
}
