package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout"
	"github.com/opesmilter/opes-milter/opes/callout/testpki"
	"github.com/opesmilter/opes-milter/policy"
)

// The policy both sides load: the callout server hosts its services, the
// processor runs it once with the services in process and once with each
// service replaced by a callout to opes-callout.
const policyTOML = `
[system]
uri = "https://mx1.example.net/opes/"

[consent]
all = true

[[service]]
name = "access"
kind = "acl"
[[service.options.entry]]
stage = "rcpt"
action = "deny"
recipient = ["trap@example.net"]
reply = "Mailbox is a spam trap"
[[service.options.entry]]
stage = "mail"
action = "tempfail"
sender = ["slow@example.org"]

[[service]]
name = "external"
kind = "tag"
bypassable = true
[service.options]
header = "X-External: yes"
subject_prefix = "[EXT]"

[[rule]]
name = "access-for-all"
run = ["access"]

[[rule]]
name = "tag-unauthenticated"
stage = "mail"
run = ["external"]
[rule.when]
authenticated = false
`

type message struct {
	auth   string
	from   string
	rcpts  []string
	header [][2]string
	body   string
}

var messages = []message{
	{from: "alice@example.org", rcpts: []string{"bob@example.net"},
		header: [][2]string{{"From", " alice@example.org"}, {"Subject", " Lunch?"}, {"Received", " from x\r\n\tby y"}}, body: "Hi.\r\n"},
	{from: "alice@example.org", rcpts: []string{"trap@example.net", "bob@example.net"},
		header: [][2]string{{"From", " alice@example.org"}, {"Subject", " =?UTF-8?Q?[EXT]_already?="}}, body: "x\r\n"},
	{from: "alice@example.org", rcpts: []string{"bob@example.net"},
		header: [][2]string{{"From", " alice@example.org"}}, body: ""},
	{auth: "alice", from: "alice@example.org", rcpts: []string{"bob@example.net"},
		header: [][2]string{{"Subject", " internal"}}, body: "y\r\n"},
	{from: "slow@example.org", rcpts: []string{"bob@example.net"}},
}

// result renders everything a message's processing produced, with the
// (random) trace id replaced.
func result(t *testing.T, proc *opes.Processor, m message) string {
	t.Helper()
	ctx := context.Background()
	s := proc.NewSession()
	defer s.Close()
	var b strings.Builder
	var ids []string
	out := func(stage string, o *opes.Outcome) bool {
		if o.TraceID != "" {
			ids = append(ids, o.TraceID)
		}
		b.WriteString(stage + ": " + o.Kind.String() + "\n")
		if o.Reply != nil {
			b.WriteString(o.Reply.String() + "\n")
		}
		return o.Kind == opes.Continue
	}
	s.Conn().Hostname = "client.example.org"
	s.Conn().AuthUser = m.auth
	ok := out("connect", s.Connect(ctx)) && out("helo", s.Helo(ctx, "client.example.org")) && out("mail", s.Mail(ctx, opes.Address{Addr: m.from}))
	if ok {
		for _, r := range m.rcpts {
			out("rcpt "+r, s.Rcpt(ctx, opes.Address{Addr: r}))
		}
		s.Data(ctx)
		for _, h := range m.header {
			s.Header(h[0], h[1])
		}
		if out("headers", s.EndOfHeaders(ctx)) {
			_ = s.BodyChunk([]byte(m.body))
			o := s.EndOfMessage(ctx, "4ABCD12")
			if out("eom", o) {
				var fields []opes.HeaderField
				for _, h := range m.header {
					fields = append(fields, opes.HeaderField{Name: h[0], Value: h[1]})
				}
				b.WriteString(opes.FormatHeader(opes.ApplyChanges(fields, o.HeaderChanges)))
				if o.Body != nil {
					body, _ := io.ReadAll(o.Body)
					b.WriteString("body: " + string(body) + "\n")
				}
				b.WriteString("quarantine: " + o.Quarantine + "\n")
			}
			s.Finish()
		}
	}
	res := b.String()
	for _, id := range ids {
		res = strings.ReplaceAll(res, id, "TRACEID")
	}
	return res
}

// TestSamePolicyLocalAndRemote runs the same policy with its services in
// process and through opes-callout over mutual TLS; every outcome, reply
// and delivered header must be byte-identical.
func TestSamePolicyLocalAndRemote(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.Generate(t, dir)
	file := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(file, []byte(policyTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-config", file, "-listen", "127.0.0.1:0",
			"-tls-cert", pki.ServerCert, "-tls-key", pki.ServerKey, "-client-ca", pki.CA}, &stderr, ready, nil)
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case code := <-done:
		t.Fatalf("opes-callout exited %d: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("opes-callout did not start")
	}
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("opes-callout exited %d: %s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("opes-callout did not stop")
		}
	}()

	local, err := policy.Parse("policy.toml", []byte(policyTOML))
	if err != nil {
		t.Fatal(err)
	}
	remote, err := policy.Parse("policy.toml", []byte(policyTOML))
	if err != nil {
		t.Fatal(err)
	}
	tc := clientTLS(t, pki)
	for _, s := range remote.Policy.Services {
		stages := s.Impl.Needs().Stages
		stages &^= opes.StagesOf(opes.StageData)
		svc, err := callout.NewService(callout.Config{
			Servers: []string{addr.String()}, Service: s.Name, Stages: stages, TLS: tc, Timeout: 5 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		s.Impl = svc
	}
	lp, err := opes.NewProcessor(local.Policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := opes.NewProcessor(remote.Policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range messages {
		want := result(t, lp, m)
		got := result(t, rp, m)
		if got != want {
			t.Errorf("message %d through opes-callout:\n%s\nlocally:\n%s", i+1, got, want)
		}
		if i == 0 && !strings.Contains(want, "X-External: yes") {
			t.Errorf("message 1 was not tagged locally:\n%s", want)
		}
		if i == 1 && !strings.Contains(want, "550-5.7.1 Mailbox is a spam trap") {
			t.Errorf("message 2: trap not refused locally:\n%s", want)
		}
	}
}

func clientTLS(t *testing.T, pki testpki.Files) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	kp, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(file, []byte(policyTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.toml")
	if err := os.WriteFile(empty, []byte("[system]\nuri = \"https://mx1.example.net/opes/\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "-config is required"},
		{[]string{"-config", filepath.Join(dir, "missing.toml")}, 1, "no such file"},
		{[]string{"-config", empty}, 1, "defines no [[service]]"},
		{[]string{"-config", file, "-listen", "0.0.0.0:0"}, 2, "not loopback"},
		{[]string{"-config", file, "-tls-cert", "x"}, 2, "go together"},
		{[]string{"-config", file, "-client-ca", "x"}, 2, "-client-ca needs"},
		{[]string{"-config", file, "-listen", "127.0.0.1:0", "-metrics-listen", "0.0.0.0:0"}, 2, "not a loopback address"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		code := run(context.Background(), c.args, &stderr, nil, nil)
		if code != c.code || !strings.Contains(stderr.String(), c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, stderr.String(), c.code, c.msg)
		}
	}
}

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tagPolicy(header string) string {
	return fmt.Sprintf(`[system]
uri = "https://mx1.example.net/opes/"
[consent]
all = true
[[service]]
name = "external"
kind = "tag"
[service.options]
header = %q
[[rule]]
name = "all"
run = ["external"]
`, header)
}

// SIGHUP reloads the file: the next transaction, on the connection the
// processor already holds, runs the new options; a broken file is refused
// and the running services stay.
func TestReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.toml")
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(tagPolicy("X-External: v1"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	reload := make(chan os.Signal, 1)
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-config", file, "-listen", "127.0.0.1:0", "-metrics-listen", "127.0.0.1:0"}, logs, ready, reload)
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case code := <-done:
		t.Fatalf("opes-callout exited %d: %s", code, logs.String())
	case <-time.After(10 * time.Second):
		t.Fatal("opes-callout did not start")
	}
	local, err := policy.Parse("policy.toml", []byte(tagPolicy("X-External: v1")))
	if err != nil {
		t.Fatal(err)
	}
	s := local.Policy.Services[0]
	svc, err := callout.NewService(callout.Config{Servers: []string{addr.String()}, Service: s.Name,
		Stages: s.Impl.Needs().Stages &^ opes.StagesOf(opes.StageData), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	s.Impl = svc
	proc, err := opes.NewProcessor(local.Policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := messages[0]
	expect := func(want string) {
		t.Helper()
		if got := result(t, proc, m); !strings.Contains(got, want) {
			t.Fatalf("want %q in:\n%s", want, got)
		}
	}
	waitLog := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), want); {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", want, logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	expect("X-External: v1")
	write(tagPolicy("X-External: v2"))
	reload <- syscall.SIGHUP
	waitLog("opes-callout: reloaded")
	expect("X-External: v2")
	write("[[service]]\nname = \"external\"\nkind = \"no-such-kind\"\n")
	reload <- syscall.SIGHUP
	waitLog("reload refused")
	expect("X-External: v2")

	// The metrics count what happened.
	addrRE := regexp.MustCompile(`"opes-callout: metrics" listen=(\S+)`)
	mm := addrRE.FindStringSubmatch(logs.String())
	if mm == nil {
		t.Fatalf("no metrics address in the log:\n%s", logs.String())
	}
	resp, err := http.Get("http://" + mm[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`opes_callout_transactions_total{outcome="continue",service="external"} 3`,
		`opes_callout_config_reloads_total{result="ok"} 1`,
		`opes_callout_config_reloads_total{result="error"} 1`,
		`opes_callout_config_last_reload_successful 0`,
		`opes_callout_connections 1`,
		`opes_callout_transaction_duration_seconds_count{service="external"} 3`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("opes-callout exited %d", code)
	}
}
