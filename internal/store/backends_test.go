package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opesmilter/opes-milter/internal/pgtest"
)

func openT(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(ctxT(t), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func embeddedDB(t *testing.T) database {
	path := filepath.Join(t.TempDir(), "opes.db")
	return database{open: func(t testing.TB, max int64) *Store {
		return openT(t, Config{Backend: "embedded", Path: path, MaxQuarantineBytes: max})
	}}
}

func TestEmbedded(t *testing.T) { runSuite(t, embeddedDB) }

// postgresDBs starts one server and gives each caller a new database on it.
func postgresDBs(t testing.TB) func(t *testing.T) database {
	dsn := pgtest.Start(t)
	var n atomic.Int32
	return func(t *testing.T) database {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := pgtest.CreateDatabase(ctx, dsn, fmt.Sprintf("suite_%d", n.Add(1)))
		if err != nil {
			t.Fatal(err)
		}
		return database{shared: true, dsn: db, open: func(t testing.TB, max int64) *Store {
			return openT(t, Config{Backend: "postgres", DSN: db, MaxQuarantineBytes: max})
		}}
	}
}

func TestPostgres(t *testing.T) { runSuite(t, postgresDBs(t)) }

func TestOpenConfig(t *testing.T) {
	ctx := ctxT(t)
	for _, cfg := range []Config{
		{Backend: "sqlite", Path: "x"},
		{Backend: "embedded"},
		{Backend: "postgres"},
		{Path: filepath.Join(t.TempDir(), "x.db"), MaxQuarantineBytes: -1},
		{Backend: "postgres", DSN: "postgres://u:secret@[::1/x"},
	} {
		s, err := Open(ctx, cfg)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("Open(%+v) = %v, want ErrInvalid", cfg, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("error shows the password: %v", err)
		}
		if s != nil {
			s.Close()
		}
	}
}

func TestEmbeddedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "opes.db")
	s := openT(t, Config{Path: path})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want 0600", fi.Mode().Perm())
	}
	// A second opener (bbolt's lock is per open file, so this stands in
	// for a second process) is told the file is locked.
	began := time.Now()
	_, err = Open(ctxT(t), Config{Path: path})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second Open: %v", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("second Open took %v", d)
	}
	s.Close()
	if _, err := Open(ctxT(t), Config{Path: filepath.Join(dir, "missing", "opes.db")}); err == nil {
		t.Error("Open created a missing parent directory or ignored it")
	}
}

func TestPostgresSchema(t *testing.T) {
	newDB := postgresDBs(t)
	db := newDB(t)
	// Hosts starting together create the schema at the same time.
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() {
			s, err := Open(context.Background(), Config{Backend: "postgres", DSN: db.dsn})
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 3; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Open: %v", err)
		}
	}
	s := db.open(t, 0)
	pg := s.b.(*pgBackend)
	if _, err := pg.pool.Exec(ctxT(t), "UPDATE opes_schema_version SET version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctxT(t), Config{Backend: "postgres", DSN: db.dsn}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: %v", err)
	}
}

// TestEmbeddedWriteErrorReturned fills the "disk" (a file size limit in a
// child process: RLIMIT_FSIZE makes writes fail with EFBIG as ENOSPC
// would) and checks that PutQuarantine reports the failure and the store
// stays usable.
func TestEmbeddedWriteErrorReturned(t *testing.T) {
	if dir := os.Getenv("STORE_TEST_FULL_DISK_DIR"); dir != "" {
		fullDiskChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestEmbeddedWriteErrorReturned$")
	cmd.Env = append(os.Environ(), "STORE_TEST_FULL_DISK_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "WRITE ERROR RETURNED") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child said: %s", strings.SplitN(string(out), "\n", 2)[0])
}

func fullDiskChild(dir string) {
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(dir, "opes.db")})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	limit := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		fmt.Println("setrlimit:", err)
		os.Exit(2)
	}
	it := QuarantineItem{Recipients: []string{"a@example.org"}}
	_, err = s.PutQuarantine(ctx, it, strings.NewReader(strings.Repeat("x", 4<<20)))
	if err == nil {
		fmt.Println("a 4 MiB message was stored in a 1 MiB file")
		os.Exit(1)
	}
	fmt.Println("WRITE ERROR RETURNED:", err)
	// Nothing half-written is visible and small writes still work.
	if items, err := s.ListQuarantine(ctx, QuarantineFilter{}); err != nil || len(items) != 0 {
		fmt.Println("after the failed write:", len(items), err)
		os.Exit(1)
	}
	if _, err := s.PutQuarantine(ctx, it, strings.NewReader("small")); err != nil {
		fmt.Println("small put after the failure:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// benchPrefs fills s with n entries over n/4 recipients in 50 domains,
// one in ten for a sender domain, plus a domain-wide entry per domain:
// a large site's worth, so the lookup cannot get away with a scan.
func benchPrefs(b *testing.B, s *Store, n int) {
	ctx := context.Background()
	for i := 0; i < n; i++ {
		p := Preference{Recipient: fmt.Sprintf("user%d@d%d.example", i%(n/4), i%50), Kind: NoOptional}
		if i%10 == 0 {
			p.Sender = fmt.Sprintf("@s%d.example", i%7)
		}
		if _, err := s.AddPreference(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	for d := 0; d < 50; d++ {
		if _, err := s.AddPreference(ctx, Preference{Recipient: fmt.Sprintf("@d%d.example", d), Sender: "bulk@s1.example", Kind: NonOPESVersion}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchMatch(b *testing.B, s *Store) {
	const n = 4000
	benchPrefs(b, s, n)
	ctx := context.Background()
	now := time.Now()
	// user0@d0.example has entries (one per sender domain s0), and its
	// domain one for bulk@s1.example.
	got, err := s.MatchPreferences(ctx, "user0@d0.example", "bulk@s1.example", now)
	if err != nil || len(got) == 0 {
		b.Fatalf("warm-up match: %v, %v", got, err)
	}
	b.Run("serial", func(b *testing.B) {
		i := 0
		for b.Loop() {
			rcpt := fmt.Sprintf("user%d@d%d.example", i%(n/4), i%50)
			i++
			if _, err := s.MatchPreferences(ctx, rcpt, "bulk@s1.example", now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				rcpt := fmt.Sprintf("user%d@d%d.example", i%(n/4), i%50)
				i++
				if _, err := s.MatchPreferences(ctx, rcpt, "bulk@s1.example", now); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkMatchPreferencesEmbedded(b *testing.B) {
	s, err := Open(context.Background(), Config{Path: filepath.Join(b.TempDir(), "opes.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchMatch(b, s)
}

func BenchmarkMatchPreferencesPostgres(b *testing.B) {
	dsn := pgtest.Start(b)
	s, err := Open(context.Background(), Config{Backend: "postgres", DSN: dsn})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchMatch(b, s)
	// Show the plan the server chose for the RCPT-time lookup.
	rows, err := s.b.(*pgBackend).pool.Query(context.Background(), `EXPLAIN SELECT `+prefCols+` FROM opes_preferences
		WHERE recipient = ANY($1) AND sender = ANY($2) AND (expires IS NULL OR expires > $3) ORDER BY id`,
		[]string{"user1@d1.example", "@d1.example"}, []string{"", "a@b.example", "@b.example"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	if !strings.Contains(strings.Join(plan, "\n"), "opes_preferences_recipient") {
		b.Errorf("the match query does not use the recipient index:\n%s", strings.Join(plan, "\n"))
	}
	b.Logf("plan:\n%s", strings.Join(plan, "\n"))
}
