package entry

import (
	"fmt"
	"strconv"
)

// Format 1: the entry as a Redis hash, written by the library's releases
// before format 2. It is read only to migrate entries (see
// Options.PreviousKeyPrefix); nothing writes it.

// Field names of a format-1 entry hash.
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

// Fields is the HMGET field list whose reply DecodeHash reads, in order.
var Fields = []string{Payload, Flags, Generation, Version, SoftExpiry, Delta, LeaseOwner, LeaseDeadline}

// DecodeHash reads an HMGET reply for Fields of a format-1 entry. A
// missing key decodes to an Entry with Exists false. Malformed fields
// return an error wrapping ErrCorrupt.
func DecodeHash(vals []any) (Entry, error) {
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
	if e.HasPayload {
		e.Flags |= FlagPayload
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
