// Package pgtest starts a private, throw-away PostgreSQL server from
// Debian's postgresql package for tests: initdb into a temporary
// directory, listen on 127.0.0.1 only on a free port, unix socket in the
// same directory, fsync off. Nothing of the system's own clusters is
// touched.
//
// A start (initdb, server start, CREATE DATABASE) takes about 1.3 s on
// the idle 2-core build machine and 9-20 s when that machine is
// saturated by parallel builds (TestStart logs it; BenchmarkStart
// measures it; initdb is most of it). So a test should start one server
// and give each subtest its own database with CreateDatabase (a
// fraction of a second), not start a server per subtest.
//
// PostgreSQL refuses to run as root. When the tests run as root, initdb,
// pg_ctl and postgres run as the unprivileged "postgres" system user
// (created by the Debian package) or, failing that, "nobody".
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Database is the name of the database created on the server; the DSN
// that Start and StartServer return points at it.
const Database = "opes"

// startTimeout bounds initdb plus server start; a loaded CI machine is
// slow, but a hung server must not hang the test run.
const startTimeout = 3 * time.Minute

// BinDir returns the directory holding the newest installed PostgreSQL's
// server binaries (/usr/lib/postgresql/<version>/bin), or an error
// saying why none is usable.
func BinDir() (string, error) {
	dirs, err := filepath.Glob("/usr/lib/postgresql/*/bin")
	if err != nil {
		return "", fmt.Errorf("pgtest: look for PostgreSQL: %w", err)
	}
	type cand struct {
		dir string
		ver float64
	}
	var cands []cand
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		if !executable(filepath.Join(d, "initdb")) || !executable(filepath.Join(d, "pg_ctl")) ||
			!executable(filepath.Join(d, "postgres")) {
			continue
		}
		cands = append(cands, cand{d, v})
	}
	if len(cands) == 0 {
		return "", errors.New("pgtest: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (Debian package postgresql)")
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].ver > cands[j].ver })
	return cands[0].dir, nil
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Start starts a PostgreSQL server in a directory of t.TempDir(), creates
// the database Database and returns a DSN for it. The server is stopped
// when the test ends. Start skips the test if PostgreSQL is not installed
// and fails it if the server does not come up.
func Start(t testing.TB) string {
	t.Helper()
	if _, err := BinDir(); err != nil {
		t.Skipf("PostgreSQL not available: %v", err)
	}
	began := time.Now()
	dsn, stop, err := StartServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	t.Logf("pgtest: PostgreSQL started in %v", time.Since(began).Round(time.Millisecond))
	return dsn
}

// StartServer starts a PostgreSQL server whose data directory, socket and
// log live in dir (which must exist and will be made traversable by the
// server's user when running as root), creates the database Database and
// returns a DSN for it and a function that stops the server at once
// (pg_ctl stop -m immediate; safe to call more than once).
func StartServer(dir string) (dsn string, stop func(), err error) {
	bin, err := BinDir()
	if err != nil {
		return "", nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: %w", err)
	}
	cred, err := serverCredential()
	if err != nil {
		return "", nil, err
	}
	srv := &server{bin: bin, dir: dir, cred: cred,
		data: filepath.Join(dir, "data"), log: filepath.Join(dir, "postgres.log")}
	if err := srv.prepareDirs(); err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := srv.initdb(ctx); err != nil {
		return "", nil, err
	}
	// The port comes from binding :0 and is released before the server
	// binds it, so another process can take it in between: retry.
	var startErr error
	for attempt := 0; attempt < 3; attempt++ {
		if startErr = srv.start(ctx); startErr == nil {
			break
		}
	}
	if startErr != nil {
		return "", nil, startErr
	}
	if err := srv.createDatabase(ctx); err != nil {
		srv.stop()
		return "", nil, err
	}
	return srv.dsn(Database), srv.stop, nil
}

type server struct {
	bin, dir, data, log string
	sock                string
	cred                *syscall.Credential // nil: run as ourselves
	port                int
	stopOnce            sync.Once
}

// serverCredential picks the user PostgreSQL runs as when we are root.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("pgtest: running as root and neither user postgres nor nobody exists; PostgreSQL refuses to run as root")
}

// prepareDirs creates the data and socket directories and, when the
// server runs as another user, hands them over and makes the path to
// them traversable (search permission only, not listing).
func (s *server) prepareDirs() error {
	if err := os.Mkdir(s.data, 0o700); err != nil {
		return fmt.Errorf("pgtest: create data directory: %w", err)
	}
	// A unix socket path is limited to 107 bytes; a deep temporary
	// directory would exceed it, so fall back to a short one.
	s.sock = filepath.Join(s.dir, "s")
	if len(s.sock)+len("/.s.PGSQL.65535") > 100 {
		d, err := os.MkdirTemp("", "pgs")
		if err != nil {
			return fmt.Errorf("pgtest: create socket directory: %w", err)
		}
		s.sock = d
	} else if err := os.Mkdir(s.sock, 0o700); err != nil {
		return fmt.Errorf("pgtest: create socket directory: %w", err)
	}
	if s.cred == nil {
		return nil
	}
	for _, d := range []string{s.data, s.sock, s.dir} {
		if err := os.Chown(d, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: hand %s to uid %d: %w", d, s.cred.Uid, err)
		}
	}
	for _, d := range []string{s.dir, s.sock} {
		if err := makeTraversable(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// makeTraversable adds o+x to dir and its ancestors where missing, but
// only inside the temporary directory: changing the modes of other parts
// of the system for a test would be a surprise.
func makeTraversable(dir string) error {
	tmp := filepath.Clean(os.TempDir())
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if d != tmp && !strings.HasPrefix(d, tmp+string(filepath.Separator)) {
				return fmt.Errorf("pgtest: %s is not searchable by the server's user; use a directory under %s", d, tmp)
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("pgtest: make %s searchable: %w", d, err)
			}
		}
		if d == filepath.Dir(d) || d == tmp {
			return nil
		}
	}
}

func (s *server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	// A clean environment: no PG* variables of the caller, C locale so
	// initdb does not depend on the machine's locales.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC", "HOME=" + s.dir}
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

func (s *server) initdb(ctx context.Context) error {
	out, err := s.command(ctx, "initdb", "-D", s.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *server) start(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	opts := strings.Join([]string{
		"-c listen_addresses=127.0.0.1",
		"-c port=" + strconv.Itoa(port),
		"-c unix_socket_directories=" + s.sock,
		"-c fsync=off",
		"-c synchronous_commit=off",
		"-c full_page_writes=off",
		"-c max_connections=60",
		"-c shared_buffers=32MB",
	}, " ")
	// -w waits until the server accepts connections.
	out, err := s.command(ctx, "pg_ctl", "start", "-w", "-t", "150", "-D", s.data,
		"-l", s.log, "-o", opts).CombinedOutput()
	if err != nil {
		logTail, _ := os.ReadFile(s.log)
		if len(logTail) > 2000 {
			logTail = logTail[len(logTail)-2000:]
		}
		// Make sure a half-started server does not linger.
		_ = s.command(context.Background(), "pg_ctl", "stop", "-m", "immediate", "-D", s.data).Run()
		return fmt.Errorf("pgtest: start PostgreSQL on port %d: %w: %s\n%s", port, err,
			strings.TrimSpace(string(out)), logTail)
	}
	return nil
}

func (s *server) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

func (s *server) createDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.dsn("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: connect to the new server: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+Database); err != nil {
		return fmt.Errorf("pgtest: create database: %w", err)
	}
	return nil
}

func (s *server) stop() {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.command(ctx, "pg_ctl", "stop", "-m", "immediate", "-D", s.data).Run(); err != nil {
			// pg_ctl failed (or timed out): kill the postmaster named
			// in its pid file so no server outlives the test.
			if b, rerr := os.ReadFile(filepath.Join(s.data, "postmaster.pid")); rerr == nil {
				first, _, _ := strings.Cut(string(b), "\n")
				if pid, perr := strconv.Atoi(strings.TrimSpace(first)); perr == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGQUIT)
				}
			}
		}
		if s.sock != filepath.Join(s.dir, "s") {
			os.RemoveAll(s.sock)
		}
	})
}

// CreateDatabase creates database name on the server dsn points at (as
// returned by Start) and returns a DSN for it: tests that each need an
// empty database share one server this way instead of paying a server
// start each.
func CreateDatabase(ctx context.Context, dsn, name string) (string, error) {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return "", fmt.Errorf("pgtest: database name %q: want lower-case letters, digits and _", name)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("pgtest: parse DSN: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name), nil
}
