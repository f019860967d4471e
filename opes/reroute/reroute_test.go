package reroute

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

const testMap = `# rewrites
joe@example.org    joe@de.example.org
@example.com       @example.org        # whole domain, local part kept
postmaster@        hostmaster@example.org
# next hops
ann@example.org    [mx-de.example.net]
eve@example.org    [MX-DE.example.net]:2525
# chains end at the last entry
old@example.org    mid@example.org
mid@example.org    new@example.org
`

// decoder returns a decode function for New that fills options like the
// policy loader would.
func decoder(o options) func(v any) error {
	return func(v any) error {
		*(v.(*options)) = o
		return nil
	}
}

func newMapService(t *testing.T, o options) opes.Service {
	t.Helper()
	if o.Map == "" {
		o.Map = writeFile(t, "reroute.map", testMap)
	}
	svc, err := New(decoder(o))
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestRewriteThroughProcessor(t *testing.T) {
	p := newProcessor(t, newMapService(t, options{}), opes.StageMail, opes.OnErrorDefault)
	hdr := [][2]string{
		{"From", " Alice <alice@example.net>"},
		{"To", " \"Bloggs, Joe\" <joe@example.org>, Bob <bob@example.net>,\r\n\tuser@example.com"},
		{"Cc", " =?ISO-8859-1?Q?J=F6rg?= <JOE@Example.ORG> (home)"},
		{"Resent-To", " Team: joe@example.org, Bob <bob@example.net>;, other@example.net"},
		{"Bcc", " undisclosed-recipients:;"},
		{"Subject", " joe@example.org stays in the subject"},
		{"Reply-To", " joe@example.org"},
	}
	res := runMessage(t, p, "alice@example.net", []string{"joe@example.org", "bob@example.net", "user@example.com"}, hdr)
	for i, o := range res.rcpts {
		if o.Kind != opes.Continue {
			t.Fatalf("rcpt %d refused: %v", i, o.Reply)
		}
	}
	if res.eom.Kind != opes.Continue {
		t.Fatalf("eom %v: %v", res.eom.Kind, res.eom.Reply)
	}
	if want := []string{"joe@example.org", "user@example.com"}; !reflect.DeepEqual(res.eom.DelRcpts, want) {
		t.Errorf("DelRcpts %v, want %v", res.eom.DelRcpts, want)
	}
	wantAdd := []opes.Address{
		{Addr: "joe@de.example.org", Args: []string{"NOTIFY=FAILURE"}},
		{Addr: "user@example.org", Args: []string{"NOTIFY=FAILURE"}},
	}
	if !reflect.DeepEqual(res.eom.AddRcpts, wantAdd) {
		t.Errorf("AddRcpts %+v, want %+v", res.eom.AddRcpts, wantAdd)
	}
	for name, want := range map[string]string{
		"To":        "\"Bloggs, Joe\" <joe@de.example.org>, Bob <bob@example.net>,\r\n\t<user@example.org>",
		"Reply-To":  "joe@example.org", // not in headers: a reply is rewritten when it is sent
		"Cc":        "=?ISO-8859-1?Q?J=F6rg?= <joe@de.example.org> (home)",
		"Resent-To": "Team: <joe@de.example.org>, Bob <bob@example.net>;, other@example.net",
		"Bcc":       "undisclosed-recipients:;",
		"From":      "Alice <alice@example.net>",
		"Subject":   "joe@example.org stays in the subject",
	} {
		if got := field(res.hdr, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if via := field(res.hdr, opes.FieldVia); !strings.Contains(via, testSystem+"svc/reroute; action=rewritten") {
		t.Errorf("OPES-Via %q lacks action=rewritten", via)
	}
	if n := count(res.hdr, DefaultNextHopHeader); n != 0 {
		t.Errorf("%d next-hop fields without a next hop", n)
	}
}

func TestChainAndDuplicates(t *testing.T) {
	p := newProcessor(t, newMapService(t, options{}), opes.StageMail, opes.OnErrorDefault)
	// old@ → mid@ → new@; new@ is also a recipient itself: deleted, not
	// added twice. postmaster@ in any domain goes to one mailbox.
	res := runMessage(t, p, "", []string{"old@example.org", "new@example.org", "postmaster@a.example", "Postmaster@b.example"},
		[][2]string{{"To", " old@example.org"}})
	if res.eom == nil || res.eom.Kind != opes.Continue {
		t.Fatalf("not delivered: %+v", res)
	}
	if want := []string{"old@example.org", "postmaster@a.example", "Postmaster@b.example"}; !reflect.DeepEqual(res.eom.DelRcpts, want) {
		t.Errorf("DelRcpts %v, want %v", res.eom.DelRcpts, want)
	}
	if len(res.eom.AddRcpts) != 1 || res.eom.AddRcpts[0].Addr != "hostmaster@example.org" {
		t.Errorf("AddRcpts %+v, want only hostmaster@example.org", res.eom.AddRcpts)
	}
	if got := field(res.hdr, "To"); got != "<new@example.org>" {
		t.Errorf("To %q", got)
	}
}

func TestRerouteAndSplit(t *testing.T) {
	p := newProcessor(t, newMapService(t, options{}), opes.StageMail, opes.OnErrorDefault)
	hdr := [][2]string{{"To", " ann@example.org"}, {DefaultNextHopHeader, " evil.example"}}
	res := runMessage(t, p, "a@example.net", []string{"ann@example.org", "bob@example.net", "eve@example.org"}, hdr)
	if res.rcpts[0].Kind != opes.Continue {
		t.Fatalf("ann refused: %v", res.rcpts[0].Reply)
	}
	// bob has the default route, eve another port: both must wait for a
	// transaction of their own.
	checkRefusal(t, res.rcpts[1], 452, "4.5.3", "separate transaction")
	checkRefusal(t, res.rcpts[2], 452, "4.5.3", "separate transaction")
	if res.eom.Kind != opes.Continue {
		t.Fatalf("eom %v", res.eom.Reply)
	}
	if len(res.eom.AddRcpts)+len(res.eom.DelRcpts) != 0 {
		t.Errorf("envelope changed: %+v", res.eom)
	}
	if got, n := field(res.hdr, DefaultNextHopHeader), count(res.hdr, DefaultNextHopHeader); got != "mx-de.example.net" || n != 1 {
		t.Errorf("next hop %q (%d fields), want only ours", got, n)
	}
	if via := field(res.hdr, opes.FieldVia); !strings.Contains(via, "svc/reroute; action=rerouted") {
		t.Errorf("OPES-Via %q lacks action=rerouted", via)
	}

	// The split recipient in its own transaction.
	res = runMessage(t, p, "a@example.net", []string{"eve@example.org"}, [][2]string{{"To", " eve@example.org"}})
	if res.eom.Kind != opes.Continue || field(res.hdr, DefaultNextHopHeader) != "mx-de.example.net:2525" {
		t.Errorf("eve: %v, next hop %q", res.eom.Kind, field(res.hdr, DefaultNextHopHeader))
	}
	if via := field(res.hdr, opes.FieldVia); !strings.Contains(via, "svc/reroute; action=rerouted") {
		t.Errorf("OPES-Via %q lacks action=rerouted", via)
	}

	// A forged next hop in mail we do not reroute is removed.
	res = runMessage(t, p, "a@example.net", []string{"bob@example.net"}, hdr)
	if n := count(res.hdr, DefaultNextHopHeader); n != 0 {
		t.Errorf("forged next-hop field kept")
	}
}

func TestUnknownRecipient(t *testing.T) {
	p := newProcessor(t, newMapService(t, options{Unknown: "reject"}), opes.StageMail, opes.OnErrorDefault)
	res := runMessage(t, p, "a@example.net", []string{"bob@example.net", "joe@example.org"}, [][2]string{{"To", " joe@example.org"}})
	checkRefusal(t, res.rcpts[0], 550, "5.1.1", "unknown in the directory")
	if !strings.Contains(res.rcpts[0].Reply.String(), testSystem+"svc/reroute; action=rejected") {
		t.Errorf("reply does not name the service:\n%s", res.rcpts[0].Reply)
	}
	if res.rcpts[1].Kind != opes.Continue || res.eom.Kind != opes.Continue {
		t.Fatalf("known recipient refused")
	}
	if !reflect.DeepEqual(res.eom.DelRcpts, []string{"joe@example.org"}) {
		t.Errorf("DelRcpts %v", res.eom.DelRcpts)
	}

	// pass (the default) leaves an unknown recipient alone.
	p = newProcessor(t, newMapService(t, options{}), opes.StageMail, opes.OnErrorDefault)
	res = runMessage(t, p, "a@example.net", []string{"bob@example.net"}, [][2]string{{"To", " bob@example.net"}})
	if res.rcpts[0].Kind != opes.Continue || res.eom.Kind != opes.Continue || len(res.eom.DelRcpts) != 0 {
		t.Errorf("unknown recipient with pass: %+v", res.eom)
	}
}

// TestEnabledAtEOM: enabled by a rule at the end of the message, the
// service looks the recipients up there, and unknown = "reject" refuses
// the message.
func TestEnabledAtEOM(t *testing.T) {
	p := newProcessor(t, newMapService(t, options{}), opes.StageEOM, opes.OnErrorDefault)
	res := runMessage(t, p, "a@example.net", []string{"joe@example.org"}, [][2]string{{"To", " Joe <joe@example.org>"}})
	if res.eom.Kind != opes.Continue || !reflect.DeepEqual(res.eom.DelRcpts, []string{"joe@example.org"}) || field(res.hdr, "To") != "Joe <joe@de.example.org>" {
		t.Errorf("at eom: %+v, To %q", res.eom, field(res.hdr, "To"))
	}
	p = newProcessor(t, newMapService(t, options{Unknown: "reject"}), opes.StageEOM, opes.OnErrorDefault)
	res = runMessage(t, p, "a@example.net", []string{"joe@example.org", "nobody@example.net"}, nil)
	checkRefusal(t, res.eom, 550, "5.1.1", "unknown in the directory")
	// Different next hops can no longer be split: tempfail, never a
	// guess.
	p = newProcessor(t, newMapService(t, options{}), opes.StageEOM, opes.OnErrorDefault)
	res = runMessage(t, p, "a@example.net", []string{"ann@example.org", "bob@example.net"}, nil)
	checkRefusal(t, res.eom, 451, "4.3.0", "unavailable")
}

// TestDirectoryDown: an LDAP server that does not answer makes the
// processor tempfail (on_error's default for a service that is not
// bypassable), at RCPT and, when the service is enabled only there, at
// the end of the message.
func TestDirectoryDown(t *testing.T) {
	svc, err := New(decoder(options{LDAP: &ldapOptions{
		URL: "ldap://" + closedPort(t), BaseDN: "dc=example,dc=org", AddressAttribute: "mailRoutingAddress", Timeout: "2s",
	}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []opes.Stage{opes.StageMail, opes.StageEOM} {
		p := newProcessor(t, svc, st, opes.OnErrorDefault)
		res := runMessage(t, p, "a@example.net", []string{"joe@example.org"}, [][2]string{{"To", " joe@example.org"}})
		o := res.eom
		if st == opes.StageMail {
			o = res.rcpts[0]
		}
		checkRefusal(t, o, 451, "4.3.0", "service reroute unavailable")
		if !strings.Contains(o.Reply.String(), "svc/reroute; action=analyzed; status=failed") {
			t.Errorf("trace lacks status=failed:\n%s", o.Reply)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	dir := t.TempDir()
	okMap := writeFile(t, "ok.map", "a@example.org b@example.org\n")
	pw := writeFile(t, "pw", "secret\n")
	cases := []struct {
		o     options
		field string
		text  string
	}{
		{options{}, "map", "map or [ldap] is required"},
		{options{Map: "relative.map"}, "map", "not an absolute path"},
		{options{Map: dir + "/missing"}, "map", "no such file"},
		{options{Map: okMap, Unknown: "drop"}, "unknown", `"drop"`},
		{options{Map: okMap, MaxHops: 99}, "max_hops", "not in 1-20"},
		{options{Map: okMap, Headers: []string{"To", "Bad Name"}}, "headers[2]", "not a header field name"},
		{options{Map: okMap, Headers: []string{"OPES-Via"}}, "headers[1]", "trace field"},
		{options{Map: okMap, NextHopHeader: "OPES-System"}, "next_hop_header", "not a header field name of our own"},
		{options{LDAP: &ldapOptions{}}, "ldap.url", "is required"},
		{options{LDAP: &ldapOptions{URL: "http://x"}}, "ldap.url", "is not ldap://"},
		{options{LDAP: &ldapOptions{URL: "ldap://u:p@127.0.0.1"}}, "ldap.url", "credentials"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "a", BindDN: "cn=admin,dc=x"}}, "ldap.bind_password_file", "is required with bind_dn"},
		{options{LDAP: &ldapOptions{URL: "ldap://ldap.example.net", BaseDN: "dc=x", AddressAttribute: "a", BindDN: "cn=admin,dc=x", BindPasswordFile: pw}}, "ldap.url", "not on loopback"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "not a dn", AddressAttribute: "a"}}, "ldap.base_dn", "not a DN"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "a", Filter: "(mail=joe)"}}, "ldap.filter", "must contain %s"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "a", Filter: "(mail=%s"}}, "ldap.filter", "not an LDAP filter"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x"}}, "ldap.address_attribute", "is required"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "mail)(x"}}, "ldap.address_attribute", "not an attribute name"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "a", Timeout: "5m"}}, "ldap.timeout", "not a duration"},
		{options{LDAP: &ldapOptions{URL: "ldap://127.0.0.1", BaseDN: "dc=x", AddressAttribute: "a", Scope: "tree"}}, "ldap.scope", "not sub, one or base"},
	}
	for _, c := range cases {
		_, err := New(decoder(c.o))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(fe.Err.Error(), c.text) {
			t.Errorf("%+v: error %v, want field %s with %q", c.o, err, c.field, c.text)
		}
	}
}

func TestMapFileErrors(t *testing.T) {
	cases := []struct{ content, text string }{
		{"a@example.org\n", ":1: want \"key address\""},
		{"\n# c\na@example.org b@example.org c@example.org\n", ":3: two addresses"},
		{"a@example.org [x.example] [y.example]\n", ":1: two next hops"},
		{"a@example.org [bad_host]\n", ":1: host name"},
		{"a@example.org [x.example]:99999\n", ":1: next hop \"x.example:99999\": port"},
		{"a@example.org b@@example.org\n", ":1: value"},
		{"a@example.org \"b c\"@example.org\n", ":1: value"},
		{"nodomain b@example.org\n", ":1: key \"nodomain\""},
		{"a@example.org b@example.org\nA@Example.org c@example.org\n", ":2: key \"A@Example.org\" is already defined on line 1"},
		{"a@example.org b@example.org\nb@example.org a@example.org\n", ":1: rewrites loop: a@example.org → b@example.org → a@example.org"},
		{"@a.example @b.example\n@b.example @a.example\n", ":1: rewrites loop"},
		{"x@example.org x1@example.org\nx1@example.org x2@example.org\nx2@example.org x3@example.org\n", ":1: too many chained rewrites (more than 2)"},
	}
	for _, c := range cases {
		p := writeFile(t, "bad.map", c.content)
		_, err := New(decoder(options{Map: p, MaxHops: 2}))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != "map" || !strings.Contains(err.Error(), p+c.text) {
			t.Errorf("%q: %v, want %q", c.content, err, p+c.text)
		}
	}
}

// TestMapReload: the file is read when the service is built, which the
// policy loader does on every SIGHUP; a service built before a change
// keeps the entries it read.
func TestMapReload(t *testing.T) {
	p := writeFile(t, "r.map", "joe@example.org joe@de.example.org\n")
	before, err := LoadMapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAt(p, "joe@example.org joe@fr.example.org\n"); err != nil {
		t.Fatal(err)
	}
	after, err := LoadMapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		m    *MapFile
		want string
	}{{before, "joe@de.example.org"}, {after, "joe@fr.example.org"}} {
		e, found, err := c.m.Lookup(ctx, "joe@example.org")
		if err != nil || !found || e.Address != c.want {
			t.Errorf("lookup: %+v %v %v, want %s", e, found, err, c.want)
		}
	}
}
