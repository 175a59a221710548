package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/redis/go-redis/v9"
)

var inspectCmd = &command{
	name:    "inspect",
	args:    "KEY",
	summary: "the decoded entry at KEY: state, version, flags, TTLs, lease, payload",
	help: `Hard TTL is the key's PTTL; soft TTL is the value's own expiry (field "s")
against the Redis server clock (TIME). A value past its soft TTL is
reloaded by the next Get even though the key still exists (it may be kept
for stale serving, Options.MaxStale).`,
	minArgs: 1, maxArgs: 1,
	flags: func(fs *flag.FlagSet) runFunc {
		preview := fs.Int("preview", 200, "bytes of payload to show")
		return func(ctx context.Context, e *env, args []string) error {
			r, err := readEntry(ctx, e.rdb, args[0], *preview)
			if err != nil {
				return err
			}
			if e.json {
				return writeJSON(e.stdout, r)
			}
			printEntry(e, r)
			if r.Corrupt != "" {
				return errors.New("corrupt entry: " + r.Corrupt)
			}
			return nil
		}
	},
}

// entryReport is one entry as the server holds it, decoded.
type entryReport struct {
	Key          string `json:"key"`
	Exists       bool   `json:"exists"`
	Type         string `json:"type"`  // Redis type: string, none, or something that is not an entry
	State        string `json:"state"` // see state()
	Corrupt      string `json:"corrupt,omitempty"`
	Version      int64  `json:"version"`
	Flags        int64  `json:"flags"`
	Negative     bool   `json:"negative"`
	Invalidated  bool   `json:"invalidated"`
	Generation   int64  `json:"generation"`
	HardTTLMs    int64  `json:"hard_ttl_ms"`              // PTTL: -1 no expiry, -2 no key
	SoftExpiryMs int64  `json:"soft_expiry_ms,omitempty"` // server ms
	SoftTTLMs    *int64 `json:"soft_ttl_ms,omitempty"`    // soft expiry - server now; negative: expired
	Fresh        bool   `json:"fresh"`                    // a Get would answer from it
	LeaseHolder  string `json:"lease_holder,omitempty"`
	LeaseLeftMs  int64  `json:"lease_left_ms,omitempty"` // <= 0: lapsed
	LastLoadMs   int64  `json:"last_load_ms"`
	HasPayload   bool   `json:"has_payload"`
	PayloadBytes int    `json:"payload_bytes"`
	Preview      string `json:"preview,omitempty"`
	ServerNowMs  int64  `json:"server_now_ms"`

	payload string // the whole payload, for compare
}

// readEntry reads key's entry, its PTTL, its type and the server time in
// one round trip (a pipeline, so the soft TTL is measured against the
// server clock of the same moment; on a cluster, the clock of the master
// serving key). A key that is not an entry (another type) is an error; a
// string whose header does not decode is reported with Corrupt set.
func readEntry(ctx context.Context, rdb redis.UniversalClient, key string, preview int) (*entryReport, error) {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		// TIME has no key: sent through the cluster client it would reach
		// any node. The soft TTL is judged by the clock of the master that
		// serves the key (the library's scripts read that one), so the
		// whole pipeline goes to it.
		m, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("redis cluster: %w", err)
		}
		rdb = m
	}
	pipe := rdb.Pipeline()
	typ := pipe.Type(ctx, key)
	pttl := pipe.PTTL(ctx, key)
	now := pipe.Time(ctx)
	vals := pipe.Get(ctx, key) // WRONGTYPE unless a string: checked below
	_, _ = pipe.Exec(ctx)
	for _, c := range []redis.Cmder{typ, pttl, now} {
		if err := c.Err(); err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
	}
	r := &entryReport{Key: key, Type: typ.Val(), HardTTLMs: pttl.Val().Milliseconds(), ServerNowMs: now.Val().UnixMilli()}
	if d := pttl.Val(); d < 0 {
		// go-redis reports -1/-2 as durations of -1/-2 ns.
		r.HardTTLMs = int64(d)
	}
	switch r.Type {
	case "none":
		r.State = "missing"
		return r, nil
	case "string":
	default:
		return r, fmt.Errorf("%s is a %s, not a cache entry (a string)", key, r.Type)
	}
	if err := vals.Err(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	en, err := entry.Decode(vals.Val(), len(vals.Val()))
	if err != nil && !strings.HasPrefix(vals.Val(), entry.Magic) {
		return r, fmt.Errorf("%s is a string without an entry header, not a cache entry", key)
	}
	if err != nil {
		r.Exists = true
		r.State = "corrupt"
		r.Corrupt = err.Error()
		return r, nil
	}
	r.Exists = en.Exists
	r.Version, r.Flags, r.Generation = en.Version, en.Flags&^entry.FlagPayload, en.Generation
	r.Negative, r.Invalidated = en.Negative(), en.Invalidated()
	r.LastLoadMs = en.Delta
	if en.SoftExpiry > 0 {
		r.SoftExpiryMs = en.SoftExpiry
		left := en.SoftExpiry - r.ServerNowMs
		r.SoftTTLMs = &left
	}
	r.Fresh = en.Usable() && en.FreshAt(r.ServerNowMs)
	if en.LeaseOwner != "" {
		r.LeaseHolder = en.LeaseOwner
		r.LeaseLeftMs = en.LeaseDeadline - r.ServerNowMs
	}
	r.HasPayload, r.PayloadBytes, r.payload = en.HasPayload, len(en.Payload), en.Payload
	r.Preview = previewOf(en.Payload, preview)
	r.State = state(&en, r.Fresh)
	return r, nil
}

// state names what an entry means to a Get.
func state(en *entry.Entry, fresh bool) string {
	switch {
	case !en.Exists:
		return "missing"
	case en.Invalidated() && en.HasPayload:
		return "tombstone (payload kept for stale serving)"
	case en.Invalidated():
		return "tombstone"
	case en.Negative() && fresh:
		return "negative (row not found)"
	case en.Negative():
		return "negative, expired"
	case en.HasPayload && fresh:
		return "value"
	case en.HasPayload:
		return "value, expired (stale)"
	default:
		return "loading (lease only, no value yet)"
	}
}

// previewOf returns the first n bytes of p with every byte that is not
// printable UTF-8 shown as '.', and "…" when cut.
func previewOf(p string, n int) string {
	if n <= 0 || p == "" {
		return ""
	}
	cut := len(p) > n
	if cut {
		p = p[:n]
	}
	var b strings.Builder
	for len(p) > 0 {
		r, size := utf8.DecodeRuneInString(p)
		switch {
		case r == utf8.RuneError && size <= 1:
			if len(p) < utf8.UTFMax && cut {
				p = "" // a rune cut by the limit
				continue
			}
			b.WriteByte('.')
		case r < 0x20 || r == 0x7f:
			b.WriteByte('.')
		default:
			b.WriteRune(r)
		}
		p = p[size:]
	}
	if cut {
		b.WriteString("…")
	}
	return b.String()
}

func ttlText(ms int64) string {
	switch ms {
	case -1:
		return "none (no expiry!)"
	case -2:
		return "-"
	}
	return msDur(ms)
}

func printEntry(e *env, r *entryReport) {
	w := e.stdout
	fmt.Fprintf(w, "key:         %s\n", r.Key)
	fmt.Fprintf(w, "state:       %s\n", r.State)
	if !r.Exists {
		return
	}
	if r.Corrupt != "" {
		fmt.Fprintf(w, "corrupt:     %s (the library treats it as a miss and replaces it)\n", r.Corrupt)
		fmt.Fprintf(w, "hard TTL:    %s\n", ttlText(r.HardTTLMs))
		return
	}
	var flags []string
	if r.Negative {
		flags = append(flags, "negative")
	}
	if r.Invalidated {
		flags = append(flags, "invalidated")
	}
	if len(flags) == 0 {
		flags = append(flags, "none")
	}
	fmt.Fprintf(w, "version:     %d\n", r.Version)
	fmt.Fprintf(w, "flags:       %d (%s)\n", r.Flags, strings.Join(flags, ", "))
	fmt.Fprintf(w, "generation:  %d\n", r.Generation)
	fmt.Fprintf(w, "hard TTL:    %s\n", ttlText(r.HardTTLMs))
	switch {
	case r.SoftTTLMs == nil:
		fmt.Fprintf(w, "soft TTL:    none\n")
	case *r.SoftTTLMs >= 0:
		fmt.Fprintf(w, "soft TTL:    %s\n", msDur(*r.SoftTTLMs))
	default:
		fmt.Fprintf(w, "soft TTL:    expired %s ago\n", msDur(-*r.SoftTTLMs))
	}
	fmt.Fprintf(w, "fresh:       %v\n", r.Fresh)
	switch {
	case r.LeaseHolder == "":
		fmt.Fprintf(w, "lease:       none\n")
	case r.LeaseLeftMs > 0:
		fmt.Fprintf(w, "lease:       held by %s, %s left\n", r.LeaseHolder, msDur(r.LeaseLeftMs))
	default:
		fmt.Fprintf(w, "lease:       %s, lapsed %s ago\n", r.LeaseHolder, msDur(-r.LeaseLeftMs))
	}
	fmt.Fprintf(w, "last load:   %s\n", msDur(r.LastLoadMs))
	if r.HasPayload {
		fmt.Fprintf(w, "payload:     %d bytes\n", r.PayloadBytes)
		fmt.Fprintf(w, "preview:     %s\n", r.Preview)
	} else {
		fmt.Fprintf(w, "payload:     none\n")
	}
}
