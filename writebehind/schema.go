package writebehind

import (
	"context"
	"database/sql"
	_ "embed" // schema.sql
	"fmt"
	"regexp"
	"strings"
)

// DefaultTable is the applied-record table used when none is named.
const DefaultTable = "writebehind_applied"

// maxCounterLen is the applied table's counter column, in bytes.
const maxCounterLen = 191

//go:embed schema.sql
var schemaSQL string

// tableName matches an unquoted MySQL identifier, optionally qualified by a
// database name. Quoting is done here, so names needing quotes are refused.
var tableName = regexp.MustCompile(`^([A-Za-z0-9_$]{1,64}\.)?[A-Za-z0-9_$]{1,64}$`)

// quoteTable validates table ("" means DefaultTable) and quotes it.
func quoteTable(table string) (string, error) {
	if table == "" {
		table = DefaultTable
	}
	if !tableName.MatchString(table) {
		return "", fmt.Errorf("writebehind: invalid table name %q (want [db.]name of letters, digits, _ and $)", table)
	}
	return "`" + strings.ReplaceAll(table, ".", "`.`") + "`", nil
}

// Schema returns the CREATE TABLE IF NOT EXISTS statement of the applied
// table named table ("" means DefaultTable): one row per counter and shard
// holding the id of the last log entry applied.
func Schema(table string) (string, error) {
	q, err := quoteTable(table)
	if err != nil {
		return "", err
	}
	return strings.Replace(schemaSQL, "`"+DefaultTable+"`", q, 1), nil
}

// Migrate creates the applied table named table ("" means DefaultTable) if
// it does not exist. It never alters an existing table.
func Migrate(ctx context.Context, db *sql.DB, table string) error {
	stmt, err := Schema(table)
	if err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("writebehind: creating %s: %w", table, err)
	}
	return nil
}
