// Package entry reads the Redis value that holds one cache entry.
//
// Format 2 (this one): one Redis string per entry, a fixed-size header of
// ASCII fields followed by the encoded value:
//
//	offset size field
//	0      2    magic "c2" (the format)
//	2      1    flags, one hex digit: FlagNegative | FlagInvalidated | FlagRowFloor | FlagPayload
//	3      16   generation, decimal µs (bumped by every invalidate and set)
//	19     19   version of the stored value, decimal
//	38     13   soft expiry, server ms (0: none)
//	51     8    duration of the last load, ms
//	59     13   lease deadline, server ms (0: no live lease)
//	72     32   lease owner token, space-padded
//	104    ...  payload
//
// A hit is one GETRANGE of the header and at most MaxValueBytes of payload,
// decoded here without allocating; the scripts (internal/script) read and
// rewrite the header alone (GETRANGE, SETRANGE), so a lease on a live entry
// never copies its payload. Fixed-width decimals compare as strings and
// keep versions exact beyond 2^53 in Lua.
//
// An owner with a zero deadline is not a lease: it is the token of the
// last script run that changed the entry (a fill, release, set or evict),
// kept so that the same run retried by the client (after a lost reply)
// answers what it answered the first time.
package entry

import (
	"errors"
	"fmt"
	"strings"
)

// Magic starts every format-2 entry.
const Magic = "c2"

// HeaderSize is the length of the header before the payload.
const HeaderSize = 104

// TokenSize is the length of a lease token (the owner field).
const TokenSize = 32

// Flag bits.
const (
	FlagNegative    = 1 // the row does not exist
	FlagInvalidated = 2 // a tombstone (a payload may be kept for stale serving)
	// FlagRowFloor marks a version floor left by an invalidation that knew
	// the row exists at that version: a negative fill is refused.
	FlagRowFloor = 4
	FlagPayload  = 8 // a payload follows the header
)

// Offsets and sizes of the header's fields.
const (
	offFlags    = 2
	offGen      = 3
	sizeGen     = 16
	offVersion  = offGen + sizeGen
	sizeVersion = 19
	offSoft     = offVersion + sizeVersion
	sizeSoft    = 13
	offDelta    = offSoft + sizeSoft
	sizeDelta   = 8
	offDeadline = offDelta + sizeDelta
	sizeDead    = 13
	offOwner    = offDeadline + sizeDead
)

// Entry is one decoded entry.
type Entry struct {
	Exists     bool   // the key holds an entry
	HasPayload bool   // Payload is set
	Payload    string // encoded value
	Flags      int64
	Generation int64
	Version    int64
	SoftExpiry int64 // server ms; 0 when none
	Delta      int64 // ms
	// LeaseOwner is the token of the live lease's holder ("" when no
	// lease is live), and LeaseDeadline when it lapses (server ms).
	LeaseOwner    string
	LeaseDeadline int64
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

// ErrCorrupt is wrapped by every error Decode and DecodeHash return.
var ErrCorrupt = errors.New("corrupt cache entry")

// ErrTooLarge is wrapped by Decode's error for a payload over the limit.
var ErrTooLarge = fmt.Errorf("%w: payload over the size limit", ErrCorrupt)

// Decode reads a format-2 entry from s, the reply of a GETRANGE of the key
// from 0 to HeaderSize+maxPayload (so s holds at most maxPayload+1 bytes
// of payload; the whole value is fine too). An empty s (the key is absent)
// decodes to an Entry with Exists false. A malformed header, or a payload
// longer than maxPayload, returns an error wrapping ErrCorrupt. The
// payload shares s's memory.
func Decode(s string, maxPayload int) (Entry, error) {
	var e Entry
	if s == "" {
		return e, nil
	}
	if len(s) < HeaderSize || s[:2] != Magic {
		return e, fmt.Errorf("%w: not a format-2 entry (%d bytes)", ErrCorrupt, len(s))
	}
	flags, ok := hexDigit(s[offFlags])
	if !ok {
		return e, fmt.Errorf("%w: flags %q", ErrCorrupt, s[offFlags])
	}
	e.Exists, e.Flags = true, flags
	var bad string
	field := func(off, size int, name string) int64 {
		n, ok := decimal(s[off : off+size])
		if !ok && bad == "" {
			bad = name
		}
		return n
	}
	e.Generation = field(offGen, sizeGen, "generation")
	e.Version = field(offVersion, sizeVersion, "version")
	e.SoftExpiry = field(offSoft, sizeSoft, "soft expiry")
	e.Delta = field(offDelta, sizeDelta, "load duration")
	e.LeaseDeadline = field(offDeadline, sizeDead, "lease deadline")
	if bad != "" {
		return Entry{}, fmt.Errorf("%w: %s in header %q", ErrCorrupt, bad, s[:HeaderSize])
	}
	if e.Generation == 0 {
		return Entry{}, fmt.Errorf("%w: no generation", ErrCorrupt)
	}
	if e.LeaseDeadline > 0 {
		e.LeaseOwner = strings.TrimRight(s[offOwner:HeaderSize], " ")
	}
	payload := s[HeaderSize:]
	switch {
	case e.Flags&FlagPayload == 0 && payload != "":
		return Entry{}, fmt.Errorf("%w: %d bytes after a header without a payload", ErrCorrupt, len(payload))
	case e.Flags&FlagPayload != 0 && e.Negative():
		return Entry{}, fmt.Errorf("%w: a negative entry with a payload", ErrCorrupt)
	case len(payload) > maxPayload:
		return Entry{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, maxPayload)
	}
	e.HasPayload = e.Flags&FlagPayload != 0
	e.Payload = payload
	return e, nil
}

// GenerationOf reads the generation from s, a GETRANGE of the key's header:
// 0 when the key is absent or does not hold a format-2 entry (the scripts
// treat such a key as absent).
func GenerationOf(s string) int64 {
	if len(s) < HeaderSize || s[:2] != Magic {
		return 0
	}
	g, ok := decimal(s[offGen : offGen+sizeGen])
	if !ok {
		return 0
	}
	return g
}

// decimal parses a fixed-width unsigned decimal without allocating.
func decimal(s string) (int64, bool) {
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-int64(c-'0'))/10 {
			return 0, false // overflow
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func hexDigit(c byte) (int64, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int64(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int64(c-'a') + 10, true
	}
	return 0, false
}

// Header returns the header of an entry as the scripts write it: for
// tests and tools that write entries by hand. owner is padded (or cut) to
// TokenSize.
func Header(flags, gen, version, soft, delta, deadline int64, owner string) string {
	if len(owner) > TokenSize {
		owner = owner[:TokenSize]
	}
	delta = min(delta, 99999999) // 8 digits
	return fmt.Sprintf("%s%x%016d%019d%013d%08d%013d%-32s", Magic, flags, gen, version, soft, delta, deadline, owner)
}
