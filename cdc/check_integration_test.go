package cdc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/cdc"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// TestRelayRefusesASourceItCannotFollow starts servers with the settings a
// relay cannot work with, and a user without the replication privilege:
// Run returns ErrSettings at once, naming the setting.
func TestRelayRefusesASourceItCannotFollow(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.MariaDBConfig{})
	db := m.DB(t)
	cases := []struct {
		variable, value, want string
	}{
		{"binlog_format", "MIXED", "binlog_format is MIXED"},
		{"binlog_row_metadata", "MINIMAL", "binlog_row_metadata is MINIMAL"},
		{"binlog_row_image", "MINIMAL", "binlog_row_image is MINIMAL"},
	}
	for _, tc := range cases {
		t.Run(tc.variable, func(t *testing.T) {
			var old string
			if err := db.QueryRow("SELECT @@GLOBAL." + tc.variable).Scan(&old); err != nil {
				t.Fatal(err)
			}
			mustExec(t, db, "SET GLOBAL "+tc.variable+" = "+tc.value) // new sessions see it
			defer mustExec(t, db, "SET GLOBAL "+tc.variable+" = "+old)
			requireRefusal(t, m.DSN("test"), tc.want)
		})
	}
	t.Run("no binlog", func(t *testing.T) {
		m := testenv.StartMariaDB(t, testenv.MariaDBConfig{Args: []string{"--skip-log-bin"}})
		requireRefusal(t, m.DSN("test"), "log_bin is OFF")
	})
	t.Run("privileges", func(t *testing.T) {
		mustExec(t, db, "CREATE USER 'plain'@'127.0.0.1'")
		mustExec(t, db, "GRANT ALL ON test.* TO 'plain'@'127.0.0.1'")
		requireRefusal(t, "plain@tcp("+m.Addr+")/test", "lacks REPLICATION SLAVE")
	})
}

func requireRefusal(t *testing.T, dsn, want string) {
	t.Helper()
	r, err := cdc.New(dsn, []cdc.Rule{{Table: "users", Target: &recorder{name: "user"}, KeyColumn: "id"}}, &cdc.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	if !errors.Is(err, cdc.ErrSettings) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run: %v; want ErrSettings saying %q", err, want)
	}
}
