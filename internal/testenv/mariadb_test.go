package testenv

import (
	"testing"
)

func TestStartMariaDBHasARowBinlogAndSurvivesAKill(t *testing.T) {
	m := StartMariaDB(t, MariaDBConfig{ServerID: 7})
	db := m.DB(t)
	var format, meta string
	var id int
	if err := db.QueryRow("SELECT @@binlog_format, @@binlog_row_metadata, @@server_id").Scan(&format, &meta, &id); err != nil {
		t.Fatal(err)
	}
	if format != "ROW" || meta != "FULL" || id != 7 {
		t.Fatalf("binlog_format %s, binlog_row_metadata %s, server_id %d; want ROW, FULL, 7", format, meta, id)
	}
	if _, err := db.Exec("CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	m.Kill(t)
	if err := db.Ping(); err == nil {
		t.Fatal("a killed server answered")
	}
	m.Restart(t)
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("after restart: %d rows, %v; want 1", n, err)
	}
}
