package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" database/sql driver
)

var compareCmd = &command{
	name:    "compare",
	args:    "KEY -dsn DSN -query 'SELECT ... WHERE id = ?' [-arg V ...]",
	summary: "the entry beside the MySQL row: do they agree, which is newer",
	help: `Runs -query with the -arg values (one -arg per '?', in order) and compares
the first row with the entry at KEY. The payload is read as JSON (the
library's default codec): each column is compared with the payload field
of the same name, matched case-insensitively and ignoring underscores
(user_name = UserName); columns without a field are listed, not compared.
A version column (-version-column, default "version") is compared with the
entry's version and tells which side is newer. -dsn defaults to
$CACHE_MYSQL_DSN.

The query runs in a read-only transaction (rolled back at the end): a
pasted statement that writes fails instead of changing the database.

Exit status: 0 when the entry and the row agree (or the verdict is
unknown), 3 when they DIFFER, 1 on an error.`,
	minArgs: 1, maxArgs: 1,
	flags: func(fs *flag.FlagSet) runFunc {
		dsn := fs.String("dsn", os.Getenv("CACHE_MYSQL_DSN"), "MySQL DSN (go-sql-driver form, e.g. root@tcp(127.0.0.1:3306)/test)")
		query := fs.String("query", "", "SELECT returning the row (first row used)")
		var qargs stringList
		fs.Var(&qargs, "arg", "query argument (repeat for several '?')")
		vcol := fs.String("version-column", "version", "column holding the row version (\"\" for none)")
		return func(ctx context.Context, e *env, args []string) error {
			if *dsn == "" || *query == "" {
				return usagef("-dsn and -query are required")
			}
			return compare(ctx, e, args[0], *dsn, *query, qargs, *vcol)
		}
	},
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type fieldDiff struct {
	Column string `json:"column"`
	Field  string `json:"field"`
	Row    any    `json:"row"`
	Cache  any    `json:"cache"`
	Equal  bool   `json:"equal"`
}

type compareReport struct {
	Key          string         `json:"key"`
	Entry        *entryReport   `json:"entry"`
	RowFound     bool           `json:"row_found"`
	Row          map[string]any `json:"row,omitempty"`
	CachedValue  any            `json:"cached_value,omitempty"` // the payload decoded as JSON
	Fields       []fieldDiff    `json:"fields,omitempty"`
	Unmatched    []string       `json:"unmatched_columns,omitempty"`
	RowVersion   *int64         `json:"row_version,omitempty"`
	CacheVersion int64          `json:"cache_version"`
	Agree        bool           `json:"agree"`
	Differ       bool           `json:"differ"` // the verdict is DIFFER: exit status 3
	Newer        string         `json:"newer"`  // "database", "cache", "" (agree or unknown)
	Verdict      string         `json:"verdict"`
}

func compare(ctx context.Context, e *env, key, dsn, query string, qargs []string, vcol string) error {
	en, err := readEntry(ctx, e.rdb, key, 200)
	if err != nil {
		return err
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	defer db.Close()
	args := make([]any, len(qargs))
	for i, a := range qargs {
		args[i] = a
	}
	row, found, err := queryRow(ctx, db, query, args)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	r := &compareReport{Key: key, Entry: en, RowFound: found, Row: row, CacheVersion: en.Version}
	if found && vcol != "" {
		for c, v := range row {
			if strings.EqualFold(c, vcol) {
				if n, ok := asInt(v); ok {
					r.RowVersion = &n
				}
			}
		}
	}
	var cached map[string]any
	if en.HasPayload {
		dec := json.NewDecoder(strings.NewReader(en.payload))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) == nil {
			r.CachedValue = v
			cached, _ = v.(map[string]any)
		}
	}
	fieldsEqual := true
	if found && cached != nil {
		cols := make([]string, 0, len(row))
		for c := range row {
			cols = append(cols, c)
		}
		sort.Strings(cols)
		for _, c := range cols {
			f, ok := matchField(cached, c)
			if !ok {
				r.Unmatched = append(r.Unmatched, c)
				continue
			}
			d := fieldDiff{Column: c, Field: f, Row: row[c], Cache: cached[f], Equal: sameValue(row[c], cached[f])}
			fieldsEqual = fieldsEqual && d.Equal
			r.Fields = append(r.Fields, d)
		}
	}
	verdict(r, en, fieldsEqual, cached != nil)
	r.Differ = strings.HasPrefix(r.Verdict, "DIFFER")
	if e.json {
		if err := writeJSON(e.stdout, r); err != nil {
			return err
		}
		return differs(r.Differ)
	}
	w := e.stdout
	fmt.Fprintf(w, "key:       %s\n", key)
	fmt.Fprintf(w, "entry:     %s, version %d", en.State, en.Version)
	if en.Exists && en.HardTTLMs >= 0 {
		fmt.Fprintf(w, ", hard TTL %s", msDur(en.HardTTLMs))
	}
	fmt.Fprintln(w)
	if r.CachedValue != nil {
		b, _ := json.Marshal(r.CachedValue)
		fmt.Fprintf(w, "cache:     %s\n", b)
	} else if en.HasPayload {
		fmt.Fprintf(w, "cache:     (not JSON) %s\n", en.Preview)
	}
	if found {
		b, _ := json.Marshal(row)
		fmt.Fprintf(w, "database:  %s\n", b)
	} else {
		fmt.Fprintf(w, "database:  no row\n")
	}
	for _, d := range r.Fields {
		if !d.Equal {
			rb, _ := json.Marshal(d.Row)
			cb, _ := json.Marshal(d.Cache)
			fmt.Fprintf(w, "  differs: %s: database %s, cache %s\n", d.Column, rb, cb)
		}
	}
	if len(r.Unmatched) > 0 {
		fmt.Fprintf(w, "  not in the payload (not compared): %s\n", strings.Join(r.Unmatched, ", "))
	}
	fmt.Fprintf(w, "verdict:   %s\n", r.Verdict)
	return differs(r.Differ)
}

// errDiffer is compare's answer "they differ": exit status 3, no message
// (the verdict was printed).
var errDiffer = errors.New("the entry and the row differ")

func differs(d bool) error {
	if d {
		return errDiffer
	}
	return nil
}

// verdict fills Agree, Newer and Verdict.
func verdict(r *compareReport, en *entryReport, fieldsEqual, comparable bool) {
	versionNote := func() {
		if r.RowVersion == nil {
			return
		}
		switch rv := *r.RowVersion; {
		case rv > en.Version:
			r.Newer = "database"
		case rv < en.Version:
			r.Newer = "cache"
		}
	}
	switch {
	case !en.Exists || en.Invalidated || (!en.HasPayload && !en.Negative):
		r.Agree = true
		r.Verdict = "agree: the cache holds no value (" + en.State + "); the next Get loads the row"
	case en.Negative && !r.RowFound:
		r.Agree = true
		r.Verdict = "agree: both say the row does not exist"
	case en.Negative:
		r.Newer = "database"
		r.Verdict = "DIFFER: the cache says not found but the row exists (database is newer); invalidate the key"
	case !r.RowFound:
		r.Newer = "database"
		r.Verdict = "DIFFER: the cache holds a value but the row is gone (database is newer); invalidate the key"
	default:
		versionNote()
		sameVersion := r.RowVersion == nil || *r.RowVersion == en.Version
		switch {
		case !comparable && r.RowVersion == nil:
			r.Verdict = "unknown: the payload is not a JSON object and there is no version column"
		case (!comparable || fieldsEqual) && sameVersion:
			r.Agree = true
			r.Verdict = "agree"
			if r.RowVersion != nil {
				r.Verdict = fmt.Sprintf("agree (version %d)", en.Version)
			}
			if !en.Fresh {
				r.Verdict += "; the entry is expired and will be reloaded anyway"
			}
		case r.Newer == "database":
			r.Verdict = fmt.Sprintf("DIFFER: database is newer (row version %d > cache version %d); invalidate the key", *r.RowVersion, en.Version)
		case r.Newer == "cache":
			r.Verdict = fmt.Sprintf("DIFFER: cache is newer (cache version %d > row version %d): a write not yet visible to this query, or a version that went backwards", en.Version, *r.RowVersion)
		default:
			r.Newer = "database"
			r.Verdict = "DIFFER: fields differ at the same (or no) version: the row changed behind the cache's back (database is the truth); invalidate the key"
		}
	}
}

// queryRow runs query in a read-only transaction (rolled back after) and
// returns its first row as column → value: a pasted query that writes
// fails rather than changing the database.
func queryRow(ctx context.Context, db *sql.DB, query string, args []any) (map[string]any, bool, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, false, err
	}
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, false, err
	}
	m := make(map[string]any, len(cols))
	for i, c := range cols {
		switch v := vals[i].(type) {
		case []byte:
			m[c] = string(v)
		case time.Time:
			m[c] = v.Format(time.RFC3339Nano)
		default:
			m[c] = v
		}
	}
	return m, true, rows.Err()
}

// matchField finds the payload field for column c: same name ignoring case
// and underscores.
func matchField(m map[string]any, c string) (string, bool) {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	if _, ok := m[c]; ok {
		return c, true
	}
	nc := norm(c)
	for f := range m {
		if norm(f) == nc {
			return f, true
		}
	}
	return "", false
}

// sameValue compares a database value with a JSON-decoded one: numbers by
// value, booleans against 0/1, times by instant, everything else as text.
func sameValue(row, cached any) bool {
	if row == nil || cached == nil {
		return row == nil && cached == nil
	}
	rs := scalarText(row)
	switch c := cached.(type) {
	case bool:
		n, ok := asInt(row)
		return ok && (n != 0) == c
	case json.Number:
		if a, err := strconv.ParseInt(rs, 10, 64); err == nil {
			if b, err := c.Int64(); err == nil {
				return a == b // exact beyond 2^53
			}
		}
		a, err1 := strconv.ParseFloat(rs, 64)
		b, err2 := c.Float64()
		if err1 == nil && err2 == nil {
			return a == b
		}
		return rs == c.String()
	case string:
		if rs == c {
			return true
		}
		ta, ok1 := parseTime(rs)
		tb, ok2 := parseTime(c)
		return ok1 && ok2 && ta.Equal(tb)
	default: // objects and arrays: compare as compact JSON
		var a, b bytes.Buffer
		cj, _ := json.Marshal(c)
		if json.Compact(&a, []byte(rs)) != nil || json.Compact(&b, cj) != nil {
			return false
		}
		return a.String() == b.String()
	}
}

func scalarText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	default:
		return fmt.Sprint(x)
	}
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case uint64:
		return int64(x), x <= 1<<63-1
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return n, err == nil
	}
	return 0, false
}

var timeLayouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999", "2006-01-02"}

func parseTime(s string) (time.Time, bool) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
