package cdc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/f4df6ac3/cache"
)

// Target is what a Rule invalidates; *cache.Loader[T] satisfies it.
type Target interface {
	// Name identifies the target in errors and logs.
	Name() string
	// InvalidateVersions invalidates the keys and leaves each a version
	// floor (see cache.Loader.InvalidateVersions). It must be safe to call
	// twice with the same keys: the relay delivers at least once.
	InvalidateVersions(ctx context.Context, kvs ...cache.KeyVersion) error
}

// Rule maps the rows of one table to the keys of one Target. A table may
// have several rules (one per Loader that caches its rows).
type Rule struct {
	// Schema is the table's database.
	// default: the database the relay's DSN names
	Schema string
	// Table is the table's name, as the binlog spells it.
	Table string
	// Target is the Loader whose keys the table's rows are.
	Target Target
	// KeyColumn names the column whose value is the key: an integer is
	// written in decimal, a string or binary value as is. Exactly one of
	// KeyColumn and Key is set.
	// default: none
	KeyColumn string
	// Key computes the key of a row, for keys built from several columns
	// or with a prefix. It is called with the row's before and after
	// images; ok false means the row has no key for this Target (nothing
	// is invalidated). It must not keep the Row.
	// default: none
	Key func(row Row) (key string, ok bool, err error)
	// VersionColumn names the column that holds the row's version, the
	// same number the cached type's CacheVersion returns: an integer, or a
	// DATETIME/TIMESTAMP column read as microseconds since the Unix epoch
	// (DATETIME as UTC). An INSERT or UPDATE leaves the after-image's
	// version as the key's floor; a DELETE (and the old key of an UPDATE
	// that changed the key) leaves the before-image's version + 1, so that
	// no reader can cache the deleted row again. Empty: the rule sets no
	// floor, and the visibility race stays open (see the package doc).
	// default: none
	VersionColumn string
}

// Row is one image (before or after) of a changed row, with the column
// names the binlog's table map carried for it.
type Row struct {
	names  []string
	values []any
}

// Value returns the value of column name, and whether the image has that
// column. Types are go-mysql's: integers as int8..int64 (uint64 for a
// large unsigned value), strings as string, binary and BLOB columns as
// []byte, DECIMAL and DATETIME as string; NULL is nil.
func (r Row) Value(name string) (any, bool) {
	for i, n := range r.names {
		if n == name && i < len(r.values) {
			return r.values[i], true
		}
	}
	return nil, false
}

// Columns returns the image's column names; the caller must not change it.
func (r Row) Columns() []string { return r.names }

// errNoColumn reports a rule's column missing from an image.
var errNoColumn = errors.New("column not in the row image")

// keyOf returns the key of row under rule.
func (ru *Rule) keyOf(row Row) (string, bool, error) {
	if ru.Key != nil {
		return ru.Key(row)
	}
	v, ok := row.Value(ru.KeyColumn)
	if !ok {
		return "", false, fmt.Errorf("cdc: %s.%s key %q: %w", ru.Schema, ru.Table, ru.KeyColumn, errNoColumn)
	}
	if v == nil {
		return "", false, nil // a NULL key names no entry
	}
	return formatKey(v), true, nil
}

// formatKey writes a column value as a key.
func formatKey(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case int8:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case uint8:
		return strconv.FormatUint(uint64(x), 10)
	case uint16:
		return strconv.FormatUint(uint64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	default:
		return fmt.Sprint(x)
	}
}

// versionOf returns the version of row under rule; 0 without a
// VersionColumn or for a NULL version.
func (ru *Rule) versionOf(row Row) (int64, error) {
	if ru.VersionColumn == "" {
		return 0, nil
	}
	v, ok := row.Value(ru.VersionColumn)
	if !ok {
		return 0, fmt.Errorf("cdc: %s.%s version %q: %w", ru.Schema, ru.Table, ru.VersionColumn, errNoColumn)
	}
	n, err := versionValue(v)
	if err != nil {
		return 0, fmt.Errorf("cdc: %s.%s version %q: %w", ru.Schema, ru.Table, ru.VersionColumn, err)
	}
	return n, nil
}

// datetimeLayout is how go-mysql writes DATETIME and TIMESTAMP values
// (with as many fraction digits as the column has).
const datetimeLayout = "2006-01-02 15:04:05.999999"

// versionValue converts a version column's value to the int64 the cache
// compares.
func versionValue(v any) (int64, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	case int:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		if x > math.MaxInt64 {
			return 0, fmt.Errorf("%d overflows int64", x)
		}
		return int64(x), nil
	case time.Time:
		return x.UnixMicro(), nil
	case string:
		t, err := time.ParseInLocation(datetimeLayout, x, time.UTC)
		if err != nil {
			return 0, fmt.Errorf("%q is neither an integer nor a DATETIME", x)
		}
		return t.UnixMicro(), nil
	default:
		return 0, fmt.Errorf("unsupported type %T", v)
	}
}
