package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestStart(t *testing.T) {
	began := time.Now()
	dsn := Start(t)
	t.Logf("start took %v", time.Since(began))
	if !strings.Contains(dsn, "127.0.0.1:") || !strings.HasSuffix(dsn, "/"+Database+"?sslmode=disable") {
		t.Fatalf("unexpected DSN %q", dsn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var db, listen, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_database(), current_setting('listen_addresses'), current_setting('fsync')").
		Scan(&db, &listen, &fsync); err != nil {
		t.Fatal(err)
	}
	if db != Database || listen != "127.0.0.1" || fsync != "off" {
		t.Errorf("database %q, listen_addresses %q, fsync %q", db, listen, fsync)
	}
	// The server must really persist what it is given.
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('x')"); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != "x" {
		t.Fatalf("read back %q, %v", v, err)
	}
}

func TestStartServerStop(t *testing.T) {
	if _, err := BinDir(); err != nil {
		t.Skipf("PostgreSQL not available: %v", err)
	}
	dir := t.TempDir()
	dsn, stop, err := StartServer(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	conn.Close(ctx)
	stop()
	stop() // a second stop is harmless
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("postmaster.pid still there after stop: %v", err)
	}
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Close(ctx)
		t.Error("server still accepts connections after stop")
	}
}

func TestBinDirIsNewest(t *testing.T) {
	dir, err := BinDir()
	if err != nil {
		t.Skipf("PostgreSQL not available: %v", err)
	}
	if !strings.HasPrefix(dir, "/usr/lib/postgresql/") || !executable(filepath.Join(dir, "postgres")) {
		t.Errorf("BinDir = %q", dir)
	}
}

func BenchmarkStart(b *testing.B) {
	if _, err := BinDir(); err != nil {
		b.Skipf("PostgreSQL not available: %v", err)
	}
	for b.Loop() {
		_, stop, err := StartServer(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		stop()
	}
}

func TestCreateDatabase(t *testing.T) {
	dsn := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := CreateDatabase(ctx, dsn, "bad-name; DROP"); err == nil {
		t.Error("CreateDatabase accepted a name that is not an identifier")
	}
	dsn2, err := CreateDatabase(ctx, dsn, "second_db")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn2)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "second_db" {
		t.Fatalf("current_database() = %q, %v", db, err)
	}
}
