package admin

import (
	"bytes"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// pageData is what the templates render.
type pageData struct {
	D       DisclosureView
	Service *ServiceView
	Rule    *RuleView
	// Trace lookup form and result.
	TraceID      string
	TraceEnabled bool
	TraceError   string
	Records      []string
}

// disclosure serves every path that is not an API or health endpoint:
// the system page, its service and rule pages, the trace lookup, and a
// redirect from / to the system path.
func (s *server) disclosure(w http.ResponseWriter, r *http.Request) {
	p := s.o.Policy()
	if p == nil {
		http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
		return
	}
	base := systemPath(p)
	path := r.URL.Path
	if path == base+"trace" {
		s.tracePage(w, r, p)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if path == "/" && base != "/" {
		http.Redirect(w, r, base, http.StatusFound)
		return
	}
	d := disclosure(p)
	data := pageData{D: d}
	tmpl := "system"
	switch {
	case path == base || path == strings.TrimSuffix(base, "/") || samePage(p, p.System.PrivacyURL, path):
	default:
		data.Service, data.Rule = findAgent(p, d, base, path)
		switch {
		case data.Service != nil:
			tmpl = "service"
		case data.Rule != nil:
			tmpl = "rule"
		default:
			http.NotFound(w, r)
			return
		}
	}
	if wantsJSON(r) {
		w.Header().Set("Vary", "Accept")
		switch {
		case data.Service != nil:
			writeJSON(w, http.StatusOK, data.Service)
		case data.Rule != nil:
			writeJSON(w, http.StatusOK, data.Rule)
		default:
			writeJSON(w, http.StatusOK, d)
		}
		return
	}
	renderHTML(w, http.StatusOK, tmpl, data)
}

// findAgent finds the service or rule a path names: <base>svc/<name>,
// <base>rule/<name>, or the path of its configured URI on the system's
// host (a URI set explicitly may live elsewhere under the system path).
func findAgent(p *opes.Policy, d DisclosureView, base, path string) (*ServiceView, *RuleView) {
	for i, sv := range d.Services {
		if path == base+"svc/"+sv.Name || samePage(p, sv.URI, path) {
			return &d.Services[i], nil
		}
	}
	for i, rv := range d.Rules {
		if path == base+"rule/"+rv.Name || samePage(p, rv.URI, path) {
			return nil, &d.Rules[i]
		}
	}
	return nil, nil
}

// samePage reports whether uri, on the system URI's host, has this path.
func samePage(p *opes.Policy, uri, path string) bool {
	if uri == "" {
		return false
	}
	u, err := url.Parse(uri)
	sys, serr := url.Parse(p.System.URI)
	return err == nil && serr == nil && strings.EqualFold(u.Host, sys.Host) && u.Path == path
}

func wantsJSON(r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "json":
		return true
	case "html":
		return false
	}
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/html")
}

// tracePage is the lookup for authorised users: a form posting the trace
// id and an API token (kept out of the URL and the access logs), or a GET
// with ?id= and HTTP basic authentication (the token as password) or a
// bearer token.
func (s *server) tracePage(w http.ResponseWriter, r *http.Request, p *opes.Policy) {
	data := pageData{D: disclosure(p), TraceEnabled: s.o.Tokens != nil}
	w.Header().Set("Cache-Control", "no-store")
	var id, token string
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		id, token = r.URL.Query().Get("id"), requestToken(r)
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := r.ParseForm(); err != nil {
			data.TraceError = "The form could not be read."
			renderHTML(w, http.StatusBadRequest, "trace", data)
			return
		}
		id, token = r.PostForm.Get("id"), r.PostForm.Get("token")
		if token == "" {
			token = requestToken(r)
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	data.TraceID = strings.TrimSpace(id)
	asJSON := wantsJSON(r)
	fail := func(code int, msg string) {
		if asJSON {
			writeError(w, code, msg)
			return
		}
		data.TraceError = msg
		renderHTML(w, code, "trace", data)
	}
	if !data.TraceEnabled {
		fail(http.StatusForbidden, "Trace lookup is disabled: no admin token file is configured.")
		return
	}
	if data.TraceID == "" && token == "" {
		if asJSON {
			writeError(w, http.StatusBadRequest, "give ?id=<trace id> and a token")
			return
		}
		renderHTML(w, http.StatusOK, "trace", data)
		return
	}
	name, ok := s.o.Tokens.Authenticate(token)
	if !ok {
		s.o.Log.Warn("admin: trace lookup with a missing or unknown token", "remote", r.RemoteAddr)
		if r.Method != http.MethodPost {
			w.Header().Set("WWW-Authenticate", `Basic realm="opes-milter trace lookup"`)
		}
		fail(http.StatusUnauthorized, "Missing or unknown token.")
		return
	}
	tv, code, err := s.lookupTrace(r.Context(), data.TraceID, actorOf(name))
	if err != nil {
		fail(code, err.Error())
		return
	}
	if asJSON {
		writeJSON(w, http.StatusOK, tv)
		return
	}
	for _, rec := range tv.Records {
		var b bytes.Buffer
		if json.Indent(&b, rec, "", "  ") != nil {
			b.Reset()
			b.Write(rec)
		}
		data.Records = append(data.Records, b.String())
	}
	renderHTML(w, http.StatusOK, "trace", data)
}

// contentSecurity allows nothing but the page's own inline style and
// form: a hostile string that escaped the template could still not run.
const contentSecurity = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func renderHTML(w http.ResponseWriter, code int, name string, data pageData) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		http.Error(w, "rendering the page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", contentSecurity)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Vary", "Accept")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

// contactHref makes the contact a link: a URL as is (the template drops
// unsafe schemes), an address as mailto:.
func contactHref(c string) string {
	if c == "" {
		return ""
	}
	if strings.Contains(c, "://") || strings.HasPrefix(c, "mailto:") {
		return c
	}
	if strings.Contains(c, "@") && !strings.ContainsAny(c, " <>\"") {
		return "mailto:" + c
	}
	return ""
}

var pages = template.Must(template.New("pages").Funcs(template.FuncMap{
	"contactHref": contactHref,
	"join":        strings.Join,
}).Parse(pageTemplates))

const pageTemplates = `
{{define "head"}}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.}}</title>
<style>
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;background:#fafafa;margin:0}
main{max-width:52rem;margin:0 auto;padding:1.5rem 1.25rem 3rem;background:#fff;min-height:100vh;box-sizing:border-box}
h1{font-size:1.6rem;margin:.2rem 0 .4rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .3rem}
code,pre{font:14px/1.4 ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;background:#f2f2f4;border-radius:3px}
code{padding:0 .25rem;overflow-wrap:anywhere}pre{padding:.6rem .8rem;overflow-x:auto}
table{border-collapse:collapse;width:100%;margin:.4rem 0}th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #e6e6e6}
th{font-weight:600;background:#f6f6f8}.muted{color:#666}.text{white-space:pre-line}
.yes{color:#0a6b2d}.no{color:#9a1c1c}ul{padding-left:1.3rem}
form{display:grid;gap:.5rem;max-width:28rem}input{font:inherit;padding:.35rem .5rem}button{font:inherit;padding:.4rem .8rem;width:max-content}
.error{background:#fdecea;border-left:4px solid #b3261e;padding:.5rem .8rem}
nav a{margin-right:1rem}
</style></head><body><main>{{end}}

{{define "foot"}}<p class="muted">Machine-readable: add <code>?format=json</code> or send <code>Accept: application/json</code>.</p>
</main></body></html>{{end}}

{{define "contact"}}{{with .D.System.Contact}}{{with contactHref .}}<a href="{{.}}">{{$.D.System.Contact}}</a>{{else}}{{.}}{{end}}{{else}}<span class="muted">not given</span>{{end}}{{end}}

{{define "yesno"}}{{if .}}<span class="yes">yes</span>{{else}}<span class="no">no</span>{{end}}{{end}}

{{define "system"}}{{template "head" (printf "OPES system %s" .D.System.URI)}}
<p class="muted">OPES processor for mail (RFC 4496, RFC 4902)</p>
<h1>{{with .D.System.Operator}}{{.}}{{else}}OPES system{{end}}</h1>
<p>This page describes the OPES system <code>{{.D.System.URI}}</code>: a mail filter that may inspect,
change, hold or refuse email on behalf of the parties named below. Mail it processed carries
<code>OPES-System</code> and <code>OPES-Via</code> header fields that name this page and each service.</p>
<nav><a href="#consent">Consent</a><a href="#privacy">Privacy</a><a href="#services">Services</a><a href="#bypass">Bypass</a><a href="#trace">Trace lookup</a></nav>

<h2>Operator and contact</h2>
<table>
<tr><th>Operator</th><td>{{with .D.System.Operator}}{{.}}{{else}}<span class="muted">not given</span>{{end}}</td></tr>
<tr><th>Contact</th><td>{{template "contact" .}}</td></tr>
<tr><th>System URI</th><td><code>{{.D.System.URI}}</code></td></tr>
</table>

<h2 id="consent">On whose behalf</h2>
{{with .D.Consent}}<p>{{.Summary}}</p>
{{with .Party}}<p>Consenting party: <strong>{{.}}</strong></p>{{end}}
{{if and (not .EveryParty) .Recipients}}<h3>Recipients (inbound mail)</h3><ul>{{range .Recipients}}<li><code>{{.}}</code></li>{{end}}</ul>{{end}}
{{if and (not .EveryParty) .Senders}}<h3>Senders (outbound mail)</h3><ul>{{range .Senders}}<li><code>{{.}}</code></li>{{end}}</ul>{{end}}
{{end}}

<h2 id="privacy">Privacy</h2>
{{with .D.System.PrivacyPolicy}}<p class="text">{{.}}</p>{{else}}<p class="muted">The operator has not published a privacy statement here; ask the contact above.</p>{{end}}
<h3>Trace data kept</h3>
{{with .D.System.Retention}}<p class="text">{{.}}</p>{{else}}<p class="muted">Not stated; ask the contact above.</p>{{end}}
<p>Trace detail in delivered mail: <strong>{{.D.System.TraceDetail}}</strong>. {{.D.System.TraceDetailText}}</p>

<h2 id="services">Services</h2>
{{if .D.Services}}<table>
<tr><th>Service</th><th>Bypass</th><th>What it may do (at most, from the stages it acts at)</th></tr>
{{range .D.Services}}<tr><td><a href="{{.Page}}"><strong>{{.Name}}</strong></a> <span class="muted">({{.Kind}})</span><br><code>{{.URI}}</code></td>
<td>{{if .BypassHonoured}}<span class="yes">can be bypassed</span>{{else if .RequiredForDelivery}}<span class="no">required for delivery</span>{{else}}<span class="no">never bypassed</span>{{end}}</td>
<td>{{if .MayChange}}{{join .MayChange "; "}}{{else}}<span class="muted">only observe</span>{{end}}</td></tr>
{{end}}</table>{{else}}<p>No services are configured: mail only receives the trace.</p>{{end}}

{{if .D.Rules}}<h3>Policy rules that decide by themselves</h3>
<table><tr><th>Rule</th><th>Stage</th><th>Verdict</th></tr>
{{range .D.Rules}}<tr><td><a href="{{.Page}}">{{.Name}}</a><br><code>{{.URI}}</code></td><td>{{.Stage}}</td><td>{{.Verdict}}</td></tr>{{end}}
</table>{{end}}

<h2 id="bypass">Asking for a bypass</h2>
<p>A request is honoured only for services that can be bypassed, and only when it is authenticated by
{{if .D.Bypass.Trust}}one of:</p><ul>{{range .D.Bypass.Trust}}<li>{{.}}</li>{{end}}</ul>{{else}}&hellip; nothing at present: in-message and dialog requests are refused; ask out of band.</p>{{end}}
{{if .D.Bypass.NotBypassable}}<p>Never bypassed: {{range $i, $u := .D.Bypass.NotBypassable}}{{if $i}}, {{end}}<code>{{$u}}</code>{{end}}.</p>{{end}}
{{if .D.Bypass.UnknownURIAsAll}}<p>A requested URI that names nothing here counts as <code>*</code> (all bypassable services).</p>{{end}}
<h3>1. In the message</h3><pre>{{.D.Bypass.InMessage.Syntax}}</pre><p>{{.D.Bypass.InMessage.Note}}</p>
<h3>2. In the SMTP dialog</h3><pre>{{.D.Bypass.InDialog.Syntax}}</pre><p>{{.D.Bypass.InDialog.Note}}</p>
<h3>3. Out of band</h3><p>{{.D.Bypass.OutOfBand.Note}} Write to {{template "contact" .}}.</p>

<h2 id="trace">Trace lookup</h2>
<p>Every message and refusal carries a trace id (<code>id=</code> in <code>OPES-System</code>, or in the refusal's reply).
Authorised staff can <a href="{{.D.TraceLookup}}">look up a trace id</a>.</p>
{{template "foot"}}{{end}}

{{define "service"}}{{template "head" (printf "OPES service %s" .Service.Name)}}
{{with .Service}}<p class="muted"><a href="{{$.D.System.Page}}">{{$.D.System.URI}}</a></p>
<h1>Service {{.Name}}</h1>
<table>
<tr><th>URI (as the trace names it)</th><td><code>{{.URI}}</code></td></tr>
<tr><th>Kind</th><td>{{.Kind}}</td></tr>
<tr><th>Can be bypassed</th><td>{{template "yesno" .BypassHonoured}}{{if .RequiredForDelivery}} &mdash; required for delivery{{else if not .Bypassable}} &mdash; not bypassable{{end}}</td></tr>
<tr><th>If it fails</th><td>{{if eq .OnError "tempfail"}}mail is delayed (temporary failure), never passed unchecked{{else if eq .OnError "reject"}}mail is refused{{else}}mail goes on without it; the trace says so{{end}}</td></tr>
<tr><th>Acts at</th><td>{{join .Stages ", "}}</td></tr>
<tr><th>Reads</th><td>{{join .Reads ", "}}</td></tr>
<tr><th>May</th><td>{{if .MayChange}}<ul>{{range .MayChange}}<li>{{.}}</li>{{end}}</ul>{{else}}only observe{{end}}</td></tr>
</table>
{{if .BypassHonoured}}<h2>Bypassing it</h2><pre>OPES-Bypass: {{.URI}}</pre>
<p>See <a href="{{$.D.System.Page}}#bypass">how to ask for a bypass</a> and when a request is honoured.</p>{{end}}
{{end}}{{template "foot"}}{{end}}

{{define "rule"}}{{template "head" (printf "OPES policy rule %s" .Rule.Name)}}
{{with .Rule}}<p class="muted"><a href="{{$.D.System.Page}}">{{$.D.System.URI}}</a></p>
<h1>Policy rule {{.Name}}</h1>
<table>
<tr><th>URI (as the trace names it)</th><td><code>{{.URI}}</code></td></tr>
<tr><th>Stage</th><td>{{.Stage}}</td></tr>
<tr><th>Verdict</th><td>{{.Verdict}}</td></tr>
</table>
<p>This is a decision of the operator's policy, not of a service; it cannot be bypassed. Questions go to {{template "contact" $}}.</p>
{{end}}{{template "foot"}}{{end}}

{{define "trace"}}{{template "head" "Trace lookup"}}
<p class="muted"><a href="{{.D.System.Page}}">{{.D.System.URI}}</a></p>
<h1>Trace lookup</h1>
{{with .TraceError}}<p class="error">{{.}}</p>{{end}}
{{if .TraceEnabled}}
<form method="post" action="{{.D.TraceLookup}}">
<label>Trace id <input name="id" value="{{.TraceID}}" required maxlength="128" autocomplete="off"></label>
<label>Admin token <input name="token" type="password" required autocomplete="off"></label>
<button type="submit">Look up</button>
</form>
{{end}}
{{if .Records}}<h2>Records for <code>{{.TraceID}}</code></h2>{{range .Records}}<pre>{{.}}</pre>{{end}}{{end}}
</main></body></html>{{end}}
`
