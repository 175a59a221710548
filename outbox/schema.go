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
	maxLoaderLen = 191
	maxKeyLen    = 767
)

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
// giving the relay order, the loader name (VARCHAR(191)), the cache key
// (VARCHAR(767), compared as bytes) and the insertion time, whose age is the
// relay's lag.
func Schema(table string) (string, error) {
	q, err := quoteTable(table)
	if err != nil {
		return "", err
	}
	return strings.Replace(schemaSQL, "`"+DefaultTable+"`", q, 1), nil
}

// Migrate creates the outbox table named table ("" means DefaultTable) if
// it does not exist. It never alters an existing table.
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
	return nil
}

func tableOrDefault(table string) string {
	if table == "" {
		return DefaultTable
	}
	return table
}
