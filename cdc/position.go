package cdc

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/f4df6ac3/cache/internal/relaystatus"
)

// Position is a place in the source's binlog: a GTID set (MariaDB
// "0-1-100", MySQL "uuid:1-100"), or a file and offset where GTIDs are off.
// A Position names the end of a transaction: a relay started there reads
// the transactions after it.
type Position struct {
	// GTID is the set of transactions at or before the position; empty in
	// file/position mode.
	GTID string
	// File and Pos are the binlog file and the offset of the next event.
	// In GTID mode they are informational (the file and offset the relay
	// read it at), and may be empty.
	File string
	Pos  uint32
}

// String writes the position as ParsePosition reads it:
// "gtid:<set>" or "file:<name>:<offset>".
func (p Position) String() string {
	if p.GTID != "" || p.File == "" {
		return "gtid:" + p.GTID
	}
	return "file:" + p.File + ":" + strconv.FormatUint(uint64(p.Pos), 10)
}

// ParsePosition reads a Position written by String.
func ParsePosition(s string) (Position, error) {
	switch {
	case strings.HasPrefix(s, "gtid:"):
		return Position{GTID: strings.TrimPrefix(s, "gtid:")}, nil
	case strings.HasPrefix(s, "file:"):
		rest := strings.TrimPrefix(s, "file:")
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return Position{}, fmt.Errorf("cdc: position %q: no offset", s)
		}
		pos, err := strconv.ParseUint(rest[i+1:], 10, 32)
		if err != nil {
			return Position{}, fmt.Errorf("cdc: position %q: %w", s, err)
		}
		return Position{File: rest[:i], Pos: uint32(pos)}, nil
	}
	return Position{}, fmt.Errorf("cdc: position %q: want gtid:<set> or file:<name>:<offset>", s)
}

// isGTID reports whether the position is a GTID set (possibly empty: the
// start of a server's history).
func (p Position) isGTID() bool { return p.GTID != "" || p.File == "" }

// gtidSet parses the position's GTID set for flavor.
func (p Position) gtidSet(flavor string) (mysql.GTIDSet, error) {
	set, err := mysql.ParseGTIDSet(flavor, p.GTID)
	if err != nil {
		return nil, fmt.Errorf("cdc: GTID set %q: %w", p.GTID, err)
	}
	return set, nil
}

// behind counts the transactions of server that are not in applied, for
// MariaDB GTID sets (per replication domain, the sequence numbers are
// consecutive); -1 when it cannot tell (MySQL, file/position, a parse
// error).
func behind(flavor string, applied, server Position) int64 {
	if flavor != mysql.MariaDBFlavor || !applied.isGTID() || !server.isGTID() {
		return -1
	}
	n, ok := relaystatus.Behind(applied.GTID, server.GTID)
	if !ok {
		return -1
	}
	return n
}
