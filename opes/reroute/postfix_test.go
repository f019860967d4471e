package reroute_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/opesmilter/opes-milter/integration"
	"github.com/opesmilter/opes-milter/milter"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/reroute"
)

// headerChecks is the Postfix half of next-hop selection, as documented:
// Postfix applies milter_header_checks to the fields a milter adds, and
// FILTER sends the whole message to that next hop.
const headerChecks = `/^X-OPES-Next-Hop:[[:space:]]*([a-z0-9.-]+):([0-9]+)$/ FILTER smtp:[$1]:$2
/^X-OPES-Next-Hop:[[:space:]]*([a-z0-9.-]+)$/ FILTER smtp:[$1]:25
`

// TestPostfixRecipe runs the service in the real milter bridge behind a
// private Postfix: a rewritten recipient reaches the default next hop
// with its new address and rewritten To; a rerouted one reaches the host
// the directory names; and a message with both kinds of recipients is
// split by Postfix's own retry of the 452.
func TestPostfixRecipe(t *testing.T) {
	integration.Require(t, "postfix", "smtp-sink")
	mainSink := integration.StartSink(t)
	otherSink := integration.StartSink(t)

	dir := integration.TempDir(t)
	mapPath := filepath.Join(dir, "reroute.map")
	mapText := fmt.Sprintf("joe@example.org joe@de.example.org\nann@example.org [%s]\n", otherSink.Addr())
	if err := os.WriteFile(mapPath, []byte(mapText), 0o644); err != nil {
		t.Fatal(err)
	}
	checks := filepath.Join(dir, "milter_header_checks")
	if err := os.WriteFile(checks, []byte(headerChecks), 0o644); err != nil {
		t.Fatal(err)
	}
	svc, err := reroute.New(func(v any) error {
		_, err := toml.Decode(fmt.Sprintf("map = %q\n", mapPath), v)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	const sys = "https://mx1.example.net/opes/"
	spec := &opes.ServiceSpec{Name: "reroute", Kind: "reroute", URI: sys + "svc/reroute", Impl: svc}
	proc, err := opes.NewProcessor(&opes.Policy{
		System:   opes.System{URI: sys},
		Services: []*opes.ServiceSpec{spec},
		Rules:    []*opes.Rule{{Name: "all", Stage: opes.StageMail, Run: []*opes.ServiceSpec{spec}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := milter.NewServer(proc, milter.Options{})
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})

	pf := integration.StartPostfix(t, integration.PostfixOptions{
		Milter:  "inet:" + ln.Addr().String(),
		RelayTo: mainSink.Addr(),
		Extra:   map[string]string{"milter_header_checks": "regexp:" + checks},
	})

	msg := func(to string) []byte {
		return []byte("From: Alice <alice@example.net>\r\nTo: " + to + "\r\nSubject: reroute test\r\n\r\nHello\r\n")
	}
	tr := integration.SendMail(t, pf.Addr(), "alice@example.net", []string{"joe@example.org"}, msg(`"Joe Bloggs" <joe@example.org>`))
	if r := tr.Replies("."); len(r) != 1 || r[0].Code != 250 {
		t.Fatalf("rewrite: not accepted: %+v", tr)
	}
	d := mainSink.WaitDump(t, func(d integration.Dump) bool { return slices.Contains(d.Rcpts, "joe@de.example.org") }, 30*time.Second)
	if got := d.Header().Get("To"); got != `"Joe Bloggs" <joe@de.example.org>` {
		t.Errorf("delivered To %q", got)
	}
	if via := d.Header().Get(opes.FieldVia); !strings.Contains(via, "svc/reroute; action=rewritten") {
		t.Errorf("OPES-Via %q", via)
	}

	tr = integration.SendMail(t, pf.Addr(), "alice@example.net", []string{"ann@example.org", "bob@example.net"}, msg("ann@example.org, bob@example.net"))
	rc := tr.Replies("RCPT")
	if len(rc) != 2 || rc[0].Code != 250 || rc[1].Code != 452 || !strings.Contains(rc[1].Raw, "4.5.3") {
		t.Fatalf("split: RCPT replies %+v", rc)
	}
	d = otherSink.WaitDump(t, func(d integration.Dump) bool { return slices.Contains(d.Rcpts, "ann@example.org") }, 30*time.Second)
	if len(d.Rcpts) != 1 {
		t.Errorf("next hop got %v, want only ann", d.Rcpts)
	}
	if via := d.Header().Get(opes.FieldVia); !strings.Contains(via, "svc/reroute; action=rerouted") {
		t.Errorf("OPES-Via %q", via)
	}
	// The client sends the deferred recipient again, on its own: it
	// takes the default route.
	tr = integration.SendMail(t, pf.Addr(), "alice@example.net", []string{"bob@example.net"}, msg("ann@example.org, bob@example.net"))
	if r := tr.Replies("."); len(r) != 1 || r[0].Code != 250 {
		t.Fatalf("retry of bob: not accepted: %+v", tr)
	}
	d = mainSink.WaitDump(t, func(d integration.Dump) bool { return slices.Contains(d.Rcpts, "bob@example.net") }, 30*time.Second)
	if hop := d.Header().Get(reroute.DefaultNextHopHeader); hop != "" {
		t.Errorf("default route with a next-hop field %q", hop)
	}
	for _, m := range mainSink.Dumps() {
		if slices.Contains(m.Rcpts, "ann@example.org") {
			t.Errorf("ann's mail reached the default next hop too")
		}
	}
}
