package reroute

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// Debian's slapd package: the daemon, slapadd, the mdb backend module and
// the schema files (misc.schema holds inetLocalMailRecipient with
// mailRoutingAddress and mailHost).
const (
	slapdBin   = "/usr/sbin/slapd"
	slapaddBin = "/usr/sbin/slapadd"
	schemaDir  = "/etc/ldap/schema"
	moduleDir  = "/usr/lib/ldap"
)

const testLDIF = `dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: uid=joe,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: joe
cn: Joe
sn: Bloggs
mail: joe@example.org
mailRoutingAddress: joe@de.example.org

dn: uid=ann,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: ann
cn: Ann
sn: Other
mail: ann@example.org
mailHost: MX2.example.net

dn: uid=kim,dc=example,dc=org
objectClass: inetOrgPerson
uid: kim
cn: Kim
sn: Same
mail: kim@example.org

dn: uid=star,dc=example,dc=org
objectClass: inetOrgPerson
uid: star
cn: Star
sn: Star
mail: st*r@example.org

dn: uid=dup1,dc=example,dc=org
objectClass: inetOrgPerson
uid: dup1
cn: Dup
sn: One
mail: dup@example.org

dn: uid=dup2,dc=example,dc=org
objectClass: inetOrgPerson
uid: dup2
cn: Dup
sn: Two
mail: dup@example.org

dn: uid=bad,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: bad
cn: Bad
sn: Data
mail: bad@example.org
mailRoutingAddress: not an address

dn: uid=loop1,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: loop1
cn: Loop
sn: One
mail: loop1@example.org
mailRoutingAddress: loop2@example.org

dn: uid=loop2,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: loop2
cn: Loop
sn: Two
mail: loop2@example.org
mailRoutingAddress: loop1@example.org
`

type slapd struct {
	t    *testing.T
	dir  string
	conf string
	addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	done chan struct{}
}

// startSlapd builds a directory in a temp dir with slapadd and starts
// slapd on a free loopback port.
func startSlapd(t *testing.T) *slapd {
	t.Helper()
	for _, p := range []string{slapdBin, slapaddBin, filepath.Join(schemaDir, "misc.schema"), filepath.Join(moduleDir, "back_mdb.so")} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("slapd not installed (Debian packages slapd, ldap-utils): %v", err)
		}
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`include %[1]s/core.schema
include %[1]s/cosine.schema
include %[1]s/inetorgperson.schema
include %[1]s/misc.schema
pidfile %[2]s/slapd.pid
modulepath %[3]s
moduleload back_mdb
database mdb
maxsize 10485760
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
rootpw secret
directory %[2]s/db
index mail eq
access to * by * read
`, schemaDir, dir, moduleDir)
	s := &slapd{t: t, dir: dir, conf: filepath.Join(dir, "slapd.conf")}
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ldif := filepath.Join(dir, "data.ldif")
	if err := os.WriteFile(ldif, []byte(testLDIF), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(slapaddBin, "-f", s.conf, "-l", ldif).CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	// The port is free when chosen; another process may take it before
	// slapd binds it, so a failed start is tried again on a new one.
	for try := 0; try < 3; try++ {
		began := time.Now()
		if err := s.start(closedPort(t)); err != nil {
			t.Logf("slapd start: %v", err)
			continue
		}
		t.Logf("slapd answered %v after start", time.Since(began).Round(time.Millisecond))
		t.Cleanup(s.stop)
		return s
	}
	t.Fatal("slapd did not start")
	return nil
}

func (s *slapd) start(addr string) error {
	cmd := exec.Command(slapdBin, "-d", "0", "-h", "ldap://"+addr+"/", "-f", s.conf)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("slapd exited: %s", stderr.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			s.cmd, s.done, s.addr = cmd, done, addr
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("slapd did not listen on %s within 10s: %s", addr, stderr.String())
}

func (s *slapd) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // in case a test paused it
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// pause stops slapd with SIGSTOP and waits until every thread is
// stopped: kill returns before a thread running on another CPU stops.
func (s *slapd) pause() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatal(err)
	}
	task := fmt.Sprintf("/proc/%d/task", s.cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		threads, err := os.ReadDir(task)
		if err != nil {
			s.t.Fatal(err)
		}
		stopped := 0
		for _, th := range threads {
			st, err := os.ReadFile(filepath.Join(task, th.Name(), "stat"))
			// The state follows the parenthesised command name.
			if i := strings.LastIndexByte(string(st), ')'); err == nil && i >= 0 && i+2 < len(st) && st[i+2] == 'T' {
				stopped++
			}
		}
		if stopped == len(threads) {
			return
		}
	}
	s.t.Fatal("slapd did not stop on SIGSTOP within 5s")
}

func (s *slapd) restart() {
	s.t.Helper()
	s.stop()
	if err := s.start(s.addr); err != nil {
		s.t.Fatalf("restart: %v", err)
	}
}

func (s *slapd) url() string { return "ldap://" + s.addr }

func newLDAP(t *testing.T, o ldapOptions) *LDAPDirectory {
	t.Helper()
	if o.BaseDN == "" {
		o.BaseDN = "dc=example,dc=org"
	}
	if o.AddressAttribute == "" && o.NextHopAttribute == "" {
		o.AddressAttribute, o.NextHopAttribute = "mailRoutingAddress", "mailHost"
	}
	d, err := newLDAPFromOptions(&o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestLDAPLookups(t *testing.T) {
	srv := startSlapd(t)
	pw := writeFile(t, "pw", "secret\n")
	d := newLDAP(t, ldapOptions{URL: srv.url(), BindDN: "cn=admin,dc=example,dc=org", BindPasswordFile: pw, Timeout: "3s"})
	cases := []struct {
		addr  string
		found bool
		want  Entry
		err   string
	}{
		{"joe@example.org", true, Entry{Address: "joe@de.example.org"}, ""},
		{"JOE@Example.ORG", true, Entry{Address: "joe@de.example.org"}, ""}, // mail matches case-insensitively
		{"ann@example.org", true, Entry{NextHop: "mx2.example.net"}, ""},
		{"kim@example.org", true, Entry{}, ""},
		{"nobody@example.org", false, Entry{}, ""},
		// RFC 4515 escaping: these would match every entry, or break the
		// filter, if the address went in raw.
		{"*", false, Entry{}, ""},
		{"*)(uid=*", false, Entry{}, ""},
		{"x@example.org)(|(mail=*", false, Entry{}, ""},
		{`\2a`, false, Entry{}, ""},
		{"st*r@example.org", true, Entry{}, ""}, // a literal '*' still finds its entry
		{"dup@example.org", false, Entry{}, "more than one entry"},
		{"bad@example.org", false, Entry{}, "not local@domain"},
	}
	for _, c := range cases {
		e, found, err := d.Lookup(ctx, c.addr)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %+v %v %v, want error %q", c.addr, e, found, err, c.err)
			}
			continue
		}
		if err != nil || found != c.found || e != c.want {
			t.Errorf("%s: %+v found=%v err=%v, want %+v found=%v", c.addr, e, found, err, c.want, c.found)
		}
	}
	if _, err := resolve(ctx, []Directory{d}, "loop1@example.org", DefaultMaxHops); !errors.Is(err, errLoop) {
		t.Errorf("loop: %v", err)
	}

	// A wrong password is an error, not "unknown".
	bad := newLDAP(t, ldapOptions{URL: srv.url(), BindDN: "cn=admin,dc=example,dc=org", BindPasswordFile: writeFile(t, "pw2", "wrong"), Timeout: "3s"})
	if _, _, err := bad.Lookup(ctx, "joe@example.org"); err == nil || !strings.Contains(err.Error(), "bind") {
		t.Errorf("wrong password: %v", err)
	}
}

// TestLDAPConnectionReuse: a pooled connection that the server closed
// (here: slapd restarted) is replaced transparently; a server that stops
// answering is an error within the timeout.
func TestLDAPConnectionReuse(t *testing.T) {
	srv := startSlapd(t)
	d := newLDAP(t, ldapOptions{URL: srv.url(), Timeout: "1s", MaxConnections: 2})
	for i := 0; i < 3; i++ {
		if e, found, err := d.Lookup(ctx, "joe@example.org"); err != nil || !found || e.Address != "joe@de.example.org" {
			t.Fatalf("lookup %d: %+v %v %v", i, e, found, err)
		}
	}
	d.mu.Lock()
	idle := len(d.idle)
	d.mu.Unlock()
	if idle != 1 {
		t.Errorf("%d idle connections after sequential lookups, want 1 reused", idle)
	}
	srv.restart()
	if e, found, err := d.Lookup(ctx, "joe@example.org"); err != nil || !found || e.Address != "joe@de.example.org" {
		t.Fatalf("after restart: %+v %v %v", e, found, err)
	}

	// Paused, slapd accepts connections (the kernel does) but answers
	// nothing: the lookup times out.
	srv.pause()
	began := time.Now()
	_, _, err := d.Lookup(ctx, "joe@example.org")
	took := time.Since(began)
	_ = srv.cmd.Process.Signal(syscall.SIGCONT)
	if !errors.Is(err, context.DeadlineExceeded) || took > 3*time.Second {
		t.Errorf("paused server: %v after %v, want a timeout after ~1s", err, took)
	}
}

// TestLDAPThroughProcessor: the service with an LDAP directory rewrites
// through the processor; with slapd stopped the recipient is tempfailed.
func TestLDAPThroughProcessor(t *testing.T) {
	srv := startSlapd(t)
	svc, err := New(decoder(options{Unknown: "reject", LDAP: &ldapOptions{
		URL: srv.url(), BaseDN: "dc=example,dc=org", Filter: "(&(objectClass=inetOrgPerson)(mail=%s))",
		AddressAttribute: "mailRoutingAddress", NextHopAttribute: "mailHost", Timeout: "2s",
	}}))
	if err != nil {
		t.Fatal(err)
	}
	p := newProcessor(t, svc, opes.StageMail, opes.OnErrorDefault)
	res := runMessage(t, p, "a@example.net", []string{"joe@example.org", "kim@example.org", "*)(uid=*"},
		[][2]string{{"To", " Joe Bloggs <joe@example.org>, Kim <kim@example.org>"}})
	if res.rcpts[0].Kind != opes.Continue || res.rcpts[1].Kind != opes.Continue {
		t.Fatalf("known recipients refused: %v %v", res.rcpts[0].Reply, res.rcpts[1].Reply)
	}
	checkRefusal(t, res.rcpts[2], 550, "5.1.1", "unknown in the directory")
	if res.eom.Kind != opes.Continue {
		t.Fatalf("eom: %v", res.eom.Reply)
	}
	if len(res.eom.DelRcpts) != 1 || res.eom.DelRcpts[0] != "joe@example.org" || len(res.eom.AddRcpts) != 1 || res.eom.AddRcpts[0].Addr != "joe@de.example.org" {
		t.Errorf("envelope: del %v add %+v", res.eom.DelRcpts, res.eom.AddRcpts)
	}
	if got := field(res.hdr, "To"); got != "Joe Bloggs <joe@de.example.org>, Kim <kim@example.org>" {
		t.Errorf("To %q", got)
	}
	if via := field(res.hdr, opes.FieldVia); !strings.Contains(via, "svc/reroute; action=rejected") {
		// One recipient was refused: the trace shows the most significant action.
		t.Errorf("OPES-Via %q", via)
	}

	srv.stop()
	res = runMessage(t, p, "a@example.net", []string{"joe@example.org"}, nil)
	checkRefusal(t, res.rcpts[0], 451, "4.3.0", "unavailable")
}
