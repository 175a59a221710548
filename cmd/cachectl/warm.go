package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strings"
)

var warmCmd = &command{
	name:    "warm",
	args:    "< KEYS",
	summary: "dry run: which keys (full keys, one a line on stdin) are cold",
	help: `cachectl cannot load rows: only the application's LoadFunc knows how to
read and encode them (use Loader.Warm in the application for that). This
command checks, before or after such a warm-up, which of the keys read from
stdin (one full Redis key a line; blank lines and # comments skipped) hold a
fresh entry and which are cold (missing, expired, tombstone, loading,
corrupt). It changes nothing.`,
	minArgs: 0, maxArgs: 0,
	flags: func(fs *flag.FlagSet) runFunc {
		all := fs.Bool("all", false, "list warm keys too, not only cold ones")
		return func(ctx context.Context, e *env, args []string) error {
			return warmCheck(ctx, e, *all)
		}
	},
}

type warmKey struct {
	Key   string `json:"key"`
	State string `json:"state"`
	Fresh bool   `json:"fresh"`
}

type warmReport struct {
	Keys  []warmKey `json:"keys"`
	Total int       `json:"total"`
	Fresh int       `json:"fresh"`
	Cold  int       `json:"cold"`
}

func warmCheck(ctx context.Context, e *env, all bool) error {
	r := warmReport{Keys: []warmKey{}}
	sc := bufio.NewScanner(e.stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k := strings.TrimSpace(sc.Text())
		if k == "" || strings.HasPrefix(k, "#") {
			continue
		}
		en, err := readEntry(ctx, e.rdb, k, 0)
		var wk warmKey
		switch {
		case en != nil && err != nil: // not a string
			wk = warmKey{Key: k, State: "not a cache entry (" + en.Type + ")"}
		case err != nil:
			return err
		default:
			wk = warmKey{Key: k, State: en.State, Fresh: en.Fresh}
		}
		r.Total++
		if wk.Fresh {
			r.Fresh++
		} else {
			r.Cold++
		}
		if all || !wk.Fresh {
			r.Keys = append(r.Keys, wk)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	if e.json {
		return writeJSON(e.stdout, r)
	}
	for _, k := range r.Keys {
		mark := "cold"
		if k.Fresh {
			mark = "warm"
		}
		fmt.Fprintf(e.stdout, "%s  %s  (%s)\n", mark, k.Key, k.State)
	}
	fmt.Fprintf(e.stdout, "%d keys: %d warm, %d cold (dry run: nothing loaded)\n", r.Total, r.Fresh, r.Cold)
	return nil
}
