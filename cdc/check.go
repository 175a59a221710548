package cdc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// ErrSettings is returned (wrapped, with what is wrong) when the source
// cannot feed a relay: no binary log, binlog_format not ROW,
// binlog_row_image or binlog_row_metadata not FULL, or the relay's user
// lacks a privilege. Run returns it at once instead of retrying.
var ErrSettings = errors.New("cdc: the source cannot feed the relay")

// source is what checkSource learnt about the server.
type source struct {
	version string
	gtid    bool // follow GTIDs (else file positions)
}

// checkSource reads the server's binlog settings and the user's grants and
// refuses, with ErrSettings, a server the relay cannot follow correctly.
func checkSource(ctx context.Context, db *sql.DB, s settings) (source, error) {
	var src source
	var logBin int
	var format, image string
	err := db.QueryRowContext(ctx, "SELECT @@version, @@log_bin, @@binlog_format, @@binlog_row_image").
		Scan(&src.version, &logBin, &format, &image)
	if err != nil {
		return src, fmt.Errorf("cdc: reading the binlog settings: %w", err)
	}
	var meta string
	if err := db.QueryRowContext(ctx, "SELECT @@binlog_row_metadata").Scan(&meta); err != nil {
		return src, fmt.Errorf("%w: server %s has no binlog_row_metadata (MariaDB >= 10.5 or MySQL >= 8.0.1 needed): %v",
			ErrSettings, src.version, err)
	}
	switch {
	case logBin != 1:
		return src, fmt.Errorf("%w: log_bin is OFF: start the server with --log-bin", ErrSettings)
	case !strings.EqualFold(format, "ROW"):
		return src, fmt.Errorf("%w: binlog_format is %s, need ROW (a statement has no row images to take keys from)", ErrSettings, format)
	case !strings.EqualFold(image, "FULL"):
		return src, fmt.Errorf("%w: binlog_row_image is %s, need FULL (both images must carry the key and version columns)", ErrSettings, image)
	case !strings.EqualFold(meta, "FULL"):
		return src, fmt.Errorf("%w: binlog_row_metadata is %s, need FULL (column names and primary key from the binlog, not the current schema)", ErrSettings, meta)
	}
	if err := checkGrants(ctx, db); err != nil {
		return src, err
	}
	src.gtid = !s.filePositions
	if s.flavor == mysql.MySQLFlavor && src.gtid {
		var mode string
		if err := db.QueryRowContext(ctx, "SELECT @@gtid_mode").Scan(&mode); err != nil {
			return src, fmt.Errorf("cdc: reading gtid_mode: %w", err)
		}
		src.gtid = strings.EqualFold(mode, "ON")
	}
	return src, nil
}

// checkGrants refuses a user without the replication privilege: without
// it the binlog dump fails later, with a less clear error. Grants through
// a role are not followed; such a user is refused (grant the privilege to
// the user directly).
func checkGrants(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "SHOW GRANTS")
	if err != nil {
		return fmt.Errorf("cdc: SHOW GRANTS: %w", err)
	}
	defer rows.Close()
	var grants []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return fmt.Errorf("cdc: SHOW GRANTS: %w", err)
		}
		grants = append(grants, g)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cdc: SHOW GRANTS: %w", err)
	}
	for _, g := range grants {
		u := strings.ToUpper(g)
		if !strings.Contains(u, " ON *.* ") {
			continue
		}
		if strings.Contains(u, "ALL PRIVILEGES") || strings.Contains(u, "REPLICATION SLAVE") ||
			strings.Contains(u, "REPLICATION REPLICA") {
			return nil
		}
	}
	return fmt.Errorf("%w: the user lacks REPLICATION SLAVE ON *.* (its grants: %s)", ErrSettings, strings.Join(grants, "; "))
}
