package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An invalid file never starts the daemon: every problem is printed as
// file:line:column and the exit status is 1.
func TestInvalidConfigDoesNotStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.toml")
	src := "[system]\nuri = \"http://insecure.example/opes\"\n\n[[service]]\nname = \"a\"\nkind = \"nosuch\"\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := run([]string{"-config", path, "-listen", "inet:1@127.0.0.1"}, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("want one line per problem, got:\n%s", stderr.String())
	}
	for _, want := range []string{path + ":2:", path + ":6:"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("no error at %s in:\n%s", want, stderr.String())
		}
	}
}

func TestBadListenSpec(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-listen", "inet:notaport@127.0.0.1"}, &stderr); code != 1 {
		t.Fatalf("exit %d; %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "notaport") {
		t.Errorf("error does not name the bad spec: %s", stderr.String())
	}
}

func TestStaleSocketHandling(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = ln.Close() // a daemon that died: the file stays, nobody answers
	if err := removeStaleSocket(stale); err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale socket still there: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	ln, err = net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	if err := removeStaleSocket(live); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("live socket: %v", err)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Fatalf("live socket removed: %v", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeStaleSocket(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
}

func TestSocketModeAndGroup(t *testing.T) {
	grp, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Fatalf("Debian's nogroup: %v", err)
	}
	path := filepath.Join(t.TempDir(), "m.sock")
	ln, err := listenSpec("unix:"+path, 0o620, "nogroup")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o620 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	if gid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Gid); gid != grp.Gid {
		t.Errorf("gid %s, want %s", gid, grp.Gid)
	}
	if _, err := listenSpec("unix:"+filepath.Join(t.TempDir(), "x.sock"), 0o660, "no-such-group-here"); err == nil {
		t.Error("unknown group accepted")
	}
}
