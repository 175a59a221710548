// Package entry decodes the Redis hash that holds one cache entry.
package entry

import (
	"errors"
	"fmt"
	"strconv"
)

// Field names of the entry hash.
const (
	Payload       = "p"  // encoded value; absent for negative entries and tombstones
	Flags         = "f"  // FlagNegative | FlagInvalidated
	Generation    = "g"  // bumped by every invalidate and set; server time in µs at creation
	Version       = "v"  // version of the stored value, decimal
	SoftExpiry    = "s"  // server time (ms) after which a refresh is due
	Delta         = "d"  // duration of the last load, ms
	LeaseOwner    = "lo" // token of the caller allowed to fill
	LeaseDeadline = "ld" // server time (ms) when the lease lapses
)

// Flag bits.
const (
	FlagNegative    = 1
	FlagInvalidated = 2
)

// Fields is the HMGET field list whose reply Decode reads, in order.
var Fields = []string{Payload, Flags, Generation, Version, SoftExpiry, Delta, LeaseOwner, LeaseDeadline}

// Entry is one decoded entry.
type Entry struct {
	Exists        bool   // the key holds an entry
	HasPayload    bool   // Payload is set
	Payload       string // encoded value
	Flags         int64
	Generation    int64
	Version       int64
	SoftExpiry    int64 // server ms; 0 when none
	Delta         int64 // ms
	LeaseOwner    string
	LeaseDeadline int64 // server ms
}

// Negative reports whether the entry records that the row does not exist.
func (e *Entry) Negative() bool { return e.Flags&FlagNegative != 0 }

// Invalidated reports whether the entry is a tombstone.
func (e *Entry) Invalidated() bool { return e.Flags&FlagInvalidated != 0 }

// Usable reports whether the entry answers a read: a value or a negative
// entry that has not been invalidated.
func (e *Entry) Usable() bool {
	return e.Exists && !e.Invalidated() && (e.HasPayload || e.Negative())
}

// FreshAt reports whether the entry's value has not expired at now (server
// ms). Entries without a soft expiry never do; Redis drops them.
func (e *Entry) FreshAt(now int64) bool {
	return e.SoftExpiry == 0 || now < e.SoftExpiry
}

// ErrCorrupt is wrapped by every error Decode returns.
var ErrCorrupt = errors.New("corrupt cache entry")

// Decode reads an HMGET reply for Fields. A missing key decodes to an Entry
// with Exists false. Malformed fields return an error wrapping ErrCorrupt.
func Decode(vals []any) (Entry, error) {
	var e Entry
	if len(vals) != len(Fields) {
		return e, fmt.Errorf("%w: %d fields, want %d", ErrCorrupt, len(vals), len(Fields))
	}
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return Entry{}, fmt.Errorf("%w: field %s has type %T", ErrCorrupt, Fields[i], v)
		}
		e.Exists = true
		var err error
		switch i {
		case 0:
			e.HasPayload, e.Payload = true, s
		case 1:
			e.Flags, err = parseInt(s)
		case 2:
			e.Generation, err = parseInt(s)
		case 3:
			e.Version, err = parseInt(s)
		case 4:
			e.SoftExpiry, err = parseInt(s)
		case 5:
			e.Delta, err = parseInt(s)
		case 6:
			e.LeaseOwner = s
		case 7:
			e.LeaseDeadline, err = parseInt(s)
		}
		if err != nil {
			return Entry{}, fmt.Errorf("%w: field %s: %q", ErrCorrupt, Fields[i], s)
		}
	}
	if e.Exists && e.Generation == 0 {
		return Entry{}, fmt.Errorf("%w: no generation", ErrCorrupt)
	}
	if e.Flags&^(FlagNegative|FlagInvalidated) != 0 {
		return Entry{}, fmt.Errorf("%w: unknown flags %d", ErrCorrupt, e.Flags)
	}
	return e, nil
}

func parseInt(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, ErrCorrupt
	}
	return n, nil
}
