package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/policy"
)

// examplePolicy loads the shipped example: real services, real rules.
func examplePolicy(t *testing.T) *opes.Policy {
	t.Helper()
	cfg, err := policy.Load("../../contrib/policy-example.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	p.System.Operator = "Example Net Ltd"
	p.System.PrivacyPolicy = "We scan mail for you.\nNothing else."
	p.System.Retention = "Transaction records: 30 days."
	p.Consent = &opes.Consent{Party: "Example Net Ltd for example.net", Recipients: []string{"@example.net"}, Senders: []string{"@example.net"}}
	p.Bypass = opes.BypassPolicy{UnknownAsAll: true, TrustAuth: true, DKIMDomains: []string{"sender"}}
	return p
}

type pageClient struct {
	t *testing.T
	h http.Handler
}

func (c pageClient) get(path string, hdr ...string) *httptest.ResponseRecorder {
	c.t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rr := httptest.NewRecorder()
	c.h.ServeHTTP(rr, req)
	return rr
}

func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func TestDisclosureFollowsRunningPolicy(t *testing.T) {
	var running atomic.Pointer[opes.Policy]
	running.Store(examplePolicy(t))
	c := pageClient{t, New(Options{Policy: running.Load})}

	rr := c.get("/opes/")
	if rr.Code != 200 || !strings.HasPrefix(rr.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /opes/: %d %s", rr.Code, rr.Header().Get("Content-Type"))
	}
	if csp := rr.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
	mustContain(t, "system page", rr.Body.String(),
		"<h1>Example Net Ltd</h1>", "https://mx1.example.net/opes/svc/access", "https://mx1.example.net/opes/svc/external",
		`href="/opes/svc/external"`, "never bypassed", "can be bypassed", "Example Net Ltd for example.net",
		"<code>@example.net</code>", "Transaction records: 30 days.", "We scan mail for you.",
		"https://mx1.example.net/opes/rule/no-executables", "X-OPES-BYPASS=", "Stock Postfix and Sendmail refuse",
		"OPES-Bypass: * | &lt;service-or-system-uri&gt;", "the sending client authenticated with SMTP AUTH",
		"the envelope sender&#39;s own domain", `href="mailto:postmaster@example.net"`, `href="/opes/trace"`,
		"Never bypassed: <code>https://mx1.example.net/opes/svc/access</code>")
	if strings.Contains(rr.Body.String(), "http://") || strings.Contains(rr.Body.String(), "<script") ||
		strings.Contains(rr.Body.String(), " src=") {
		t.Error("the page loads or links external assets")
	}

	if rr := c.get("/"); rr.Code != http.StatusFound || rr.Header().Get("Location") != "/opes/" {
		t.Errorf("GET /: %d %q", rr.Code, rr.Header().Get("Location"))
	}
	// The privacy URL of every refusal's last line resolves to the page.
	if rr := c.get("/opes/privacy"); rr.Code != 200 || !strings.Contains(rr.Body.String(), "Example Net Ltd") {
		t.Errorf("GET /opes/privacy: %d", rr.Code)
	}
	// The URIs the trace names resolve.
	rr = c.get("/opes/svc/external")
	if rr.Code != 200 {
		t.Fatalf("service page: %d", rr.Code)
	}
	mustContain(t, "service page", rr.Body.String(), "Service external", "<code>https://mx1.example.net/opes/svc/external</code>",
		"OPES-Bypass: https://mx1.example.net/opes/svc/external", "add, change or remove header fields", "mail goes on without it")
	rr = c.get("/opes/svc/access")
	mustContain(t, "access page", rr.Body.String(), "not bypassable", "mail is delayed", "refuse the connection", "refuse a recipient")
	if strings.Contains(rr.Body.String(), "Bypassing it") {
		t.Error("non-bypassable service page explains how to bypass it")
	}
	if rr := c.get("/opes/rule/no-executables"); rr.Code != 200 || !strings.Contains(rr.Body.String(), "<td>reject</td>") {
		t.Errorf("rule page: %d\n%s", rr.Code, rr.Body.String())
	}
	for _, p := range []string{"/opes/svc/nope", "/opes/rule/access-for-all", "/elsewhere"} {
		if rr := c.get(p); rr.Code != 404 {
			t.Errorf("GET %s: %d, want 404", p, rr.Code)
		}
	}

	// Reload: a new policy with another system URI and operator.
	next := examplePolicy(t)
	next.System.URI = "https://mx2.example.net/mail/opes/"
	next.System.Operator = "Other Operator GmbH"
	next.Services = next.Services[:1]
	next.Services[0].URI = "https://mx2.example.net/mail/opes/svc/access"
	running.Store(next)
	rr = c.get("/mail/opes/")
	if rr.Code != 200 {
		t.Fatalf("new system path: %d", rr.Code)
	}
	mustContain(t, "reloaded page", rr.Body.String(), "Other Operator GmbH", "https://mx2.example.net/mail/opes/svc/access")
	if strings.Contains(rr.Body.String(), "Example Net Ltd</h1>") || strings.Contains(rr.Body.String(), "svc/external") {
		t.Error("reloaded page still shows the old policy")
	}
	if rr := c.get("/opes/"); rr.Code != 404 {
		t.Errorf("old system path after reload: %d", rr.Code)
	}
	if rr := c.get("/"); rr.Header().Get("Location") != "/mail/opes/" {
		t.Errorf("redirect after reload: %q", rr.Header().Get("Location"))
	}
}

func TestDisclosureEscapesConfigText(t *testing.T) {
	p := examplePolicy(t)
	p.System.Operator = `<script>alert("op")</script>`
	p.System.Contact = `javascript:alert(1)//@x`
	p.System.PrivacyPolicy = `"><img src=x onerror=alert(2)>`
	p.System.Retention = `</p><iframe src="https://evil.example/">`
	p.Consent.Party = `<b onmouseover="alert(3)">party</b>`
	p.Consent.Recipients = []string{`@evil"><svg onload=alert(4)>`}
	p.Services[1].Name = `ext<script>`
	p.Services[1].Kind = `<u>kind</u>`
	c := pageClient{t, New(Options{Policy: func() *opes.Policy { return p }})}
	rr := c.get("/opes/")
	body := rr.Body.String()
	if rr.Code != 200 {
		t.Fatalf("%d", rr.Code)
	}
	for _, bad := range []string{"<script>", "<img", "<iframe", "<b onmouseover", "<svg", `href="javascript:`, "<u>kind"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains unescaped %q", bad)
		}
	}
	mustContain(t, "hostile page", body, "&lt;script&gt;alert(&#34;op&#34;)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;",
		"&lt;b onmouseover=", "&lt;u&gt;kind&lt;/u&gt;", `href="/opes/svc/ext%3Cscript%3E"`)
	// The hostile service name still resolves, and its page escapes too.
	rr = c.get("/opes/svc/ext%3Cscript%3E")
	if rr.Code != 200 || strings.Contains(rr.Body.String(), "<script>") || !strings.Contains(rr.Body.String(), "Service ext&lt;script&gt;") {
		t.Errorf("hostile service page: %d", rr.Code)
	}
}

func TestDisclosureJSON(t *testing.T) {
	p := examplePolicy(t)
	c := pageClient{t, New(Options{Policy: func() *opes.Policy { return p }})}
	for _, rr := range []*httptest.ResponseRecorder{c.get("/opes/?format=json"), c.get("/opes/", "Accept", "application/json")} {
		if rr.Code != 200 || rr.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%d %s", rr.Code, rr.Header().Get("Content-Type"))
		}
		var d DisclosureView
		if err := json.Unmarshal(rr.Body.Bytes(), &d); err != nil {
			t.Fatal(err)
		}
		if d.System.URI != "https://mx1.example.net/opes/" || d.System.Operator != "Example Net Ltd" ||
			d.System.Contact != "postmaster@example.net" || d.System.Retention != "Transaction records: 30 days." ||
			d.System.TraceDetail != "full" || d.System.PrivacyURL != "https://mx1.example.net/opes/privacy" || d.TraceLookup != "/opes/trace" {
			t.Errorf("system: %+v, lookup %q", d.System, d.TraceLookup)
		}
		if d.Consent.EveryParty || d.Consent.Party != "Example Net Ltd for example.net" || len(d.Consent.Recipients) != 1 {
			t.Errorf("consent: %+v", d.Consent)
		}
		if len(d.Services) != 2 {
			t.Fatalf("services: %+v", d.Services)
		}
		acc, ext := d.Services[0], d.Services[1]
		if acc.URI != "https://mx1.example.net/opes/svc/access" || acc.Bypassable || acc.BypassHonoured || acc.OnError != "tempfail" ||
			acc.Page != "/opes/svc/access" {
			t.Errorf("access: %+v", acc)
		}
		if ext.Kind != "tag" || !ext.Bypassable || !ext.BypassHonoured || ext.OnError != "continue" || !contains(ext.Stages, "eom") ||
			!contains(ext.MayChange, "replace the message body") {
			t.Errorf("external: %+v", ext)
		}
		if len(d.Rules) != 1 || d.Rules[0].URI != "https://mx1.example.net/opes/rule/no-executables" || d.Rules[0].Verdict != "reject" || d.Rules[0].Stage != "headers" {
			t.Errorf("rules: %+v", d.Rules)
		}
		if !d.Bypass.UnknownURIAsAll || len(d.Bypass.Trust) != 2 || len(d.Bypass.NotBypassable) != 1 ||
			!strings.Contains(d.Bypass.InDialog.Note, "Postfix") || !strings.HasPrefix(d.Bypass.InMessage.Syntax, "OPES-Bypass:") {
			t.Errorf("bypass: %+v", d.Bypass)
		}
	}
	// The field names are the schema tools rely on.
	var raw map[string]map[string]any
	rr := c.get("/opes/?format=json")
	var top map[string]json.RawMessage
	if err := json.Unmarshal(rr.Body.Bytes(), &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"system", "consent", "services", "rules", "bypass", "trace_lookup"} {
		if _, ok := top[k]; !ok {
			t.Errorf("no top-level %q", k)
		}
	}
	if err := json.Unmarshal(top["system"], new(map[string]any)); err != nil {
		t.Fatal(err)
	}
	raw = map[string]map[string]any{}
	for _, k := range []string{"system", "consent", "bypass"} {
		m := map[string]any{}
		if err := json.Unmarshal(top[k], &m); err != nil {
			t.Fatal(err)
		}
		raw[k] = m
	}
	for sec, keys := range map[string][]string{
		"system":  {"uri", "operator", "contact", "privacy_url", "privacy_policy", "retention", "trace_detail"},
		"consent": {"every_party", "party", "recipients", "senders", "summary"},
		"bypass":  {"in_message", "in_dialog", "out_of_band", "trust", "unknown_uri_as_all", "not_bypassable"},
	} {
		for _, k := range keys {
			if _, ok := raw[sec][k]; !ok {
				t.Errorf("%s has no %q", sec, k)
			}
		}
	}
	var svcs []map[string]any
	if err := json.Unmarshal(top["services"], &svcs); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "kind", "uri", "bypassable", "required_for_delivery", "may_change", "stages", "reads", "on_error"} {
		if _, ok := svcs[0][k]; !ok {
			t.Errorf("service has no %q", k)
		}
	}
	// A service page in JSON.
	rr = c.get("/opes/svc/external?format=json")
	var sv ServiceView
	if err := json.Unmarshal(rr.Body.Bytes(), &sv); err != nil || sv.URI != "https://mx1.example.net/opes/svc/external" {
		t.Errorf("service JSON: %v %+v", err, sv)
	}
}

func TestDisclosureConsent(t *testing.T) {
	p := examplePolicy(t)
	page := func() DisclosureView {
		rr := pageClient{t, New(Options{Policy: func() *opes.Policy { return p }})}.get("/opes/?format=json")
		var d DisclosureView
		if err := json.NewDecoder(io.Reader(rr.Body)).Decode(&d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	p.Consent = nil
	if d := page(); !d.Consent.EveryParty || !strings.Contains(d.Consent.Summary, "every party") {
		t.Errorf("nil consent: %+v", d.Consent)
	}
	p.Consent = &opes.Consent{}
	if d := page(); d.Consent.EveryParty || !strings.Contains(d.Consent.Summary, "Nobody") {
		t.Errorf("empty consent: %+v", d.Consent)
	}
	p.Consent = &opes.Consent{All: true, Party: "the gateway's customers"}
	if d := page(); !d.Consent.EveryParty || d.Consent.Party != "the gateway's customers" {
		t.Errorf("all: %+v", d.Consent)
	}
	p.Bypass = opes.BypassPolicy{}
	rr := pageClient{t, New(Options{Policy: func() *opes.Policy { return p }})}.get("/opes/")
	mustContain(t, "no-trust page", rr.Body.String(), "in-message and dialog requests are refused")
}

func TestDisclosureMethods(t *testing.T) {
	p := examplePolicy(t)
	h := New(Options{Policy: func() *opes.Policy { return p }})
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest("POST", "/opes/", strings.NewReader("x")))
	if rr.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /opes/: %d", rr.Code)
	}
	rr = httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest("HEAD", "/opes/", nil))
	if rr.Code != 200 {
		t.Errorf("HEAD /opes/: %d", rr.Code)
	}
	// No policy func: no page, the health endpoints still work.
	h = Handler(func() error { return nil }, http.NotFoundHandler())
	rr = httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest("GET", "/opes/", nil))
	if rr.Code != 404 {
		t.Errorf("without a policy: %d", rr.Code)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
