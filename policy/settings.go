package policy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/report"
	"github.com/opesmilter/opes-milter/internal/sockspec"
	"github.com/opesmilter/opes-milter/opes"
)

func (l *loader) system(v any, sys *opes.System) {
	p := path{{key: "system"}}
	t, ok := l.table(v, p, systemKeys)
	if !ok {
		return
	}
	if !t.has("uri") {
		l.errorf(p.key("uri"), `is required: the OPES system URI, e.g. uri = "https://mx1.example.net/opes/"`)
	} else if uri, ok := t.str("uri"); ok {
		if err := checkSystemURI(uri); err != nil {
			l.errorf(p.key("uri"), "%v", err)
		} else {
			sys.URI, l.sysURI = uri, uri
		}
	}
	sys.PrivacyURL = sys.URI
	if s, ok := t.str("privacy_url"); ok {
		if err := checkPrivacyURL(s); err != nil {
			l.errorf(p.key("privacy_url"), "%v", err)
		} else {
			sys.PrivacyURL = s
		}
	}
	if s, ok := t.str("contact"); ok {
		if err := checkText(s, 256); err != nil {
			l.errorf(p.key("contact"), "%v", err)
		}
		sys.Contact = s
	}
	for _, f := range []struct {
		key   string
		limit int
		to    *string
	}{{"operator", 400, &sys.Operator}, {"privacy_policy", 4000, &sys.PrivacyPolicy}, {"retention", 1000, &sys.Retention}} {
		if s, ok := t.str(f.key); ok {
			if err := checkProse(s, f.limit); err != nil {
				l.errorf(p.key(f.key), "%v", err)
			}
			*f.to = s
		}
	}
	if s, ok := t.str("trace_detail"); ok {
		d, err := opes.ParseTraceDetail(s)
		if err != nil {
			l.errorf(p.key("trace_detail"), "%v", err)
		}
		sys.TraceDetail = d
	}
}

// checkSystemURI adds PROFILE §1's https and the loader's own needs to
// opes.CheckAgentURI: service and rule URIs are formed by appending
// "svc/<name>" and "rule/<name>", which needs a trailing slash and no
// query.
func checkSystemURI(s string) error {
	if err := opes.CheckAgentURI(s); err != nil {
		return err
	}
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch {
	case !strings.EqualFold(u.Scheme, "https"):
		return fmt.Errorf("URI %q must use https", s)
	case u.User != nil:
		return fmt.Errorf("URI %q must not contain user information", s)
	case u.RawQuery != "" || u.ForceQuery:
		return fmt.Errorf("URI %q must not have a query: service and rule URIs are formed by appending to it", s)
	case !strings.HasSuffix(s, "/"):
		return fmt.Errorf(`URI %q must end with "/": service URIs are formed by appending "svc/<name>"`, s)
	}
	return nil
}

// checkPrivacyURL: the URL is shown in every refusal reply, so it must
// be a plain http(s) URL of printable ASCII that fits a reply line.
func checkPrivacyURL(s string) error {
	if s == "" {
		return errors.New("empty URL")
	}
	if err := checkText(s, 400); err != nil {
		return err
	}
	if strings.Contains(s, " ") {
		return fmt.Errorf("URL %q contains a space", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("URL %q: %v", s, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("URL %q is not an absolute http or https URL", s)
	}
	return nil
}

func (l *loader) milter(v any, m *Milter) {
	p := path{{key: "milter"}}
	*m = Milter{Listen: DefaultListen, WriteTimeout: DefaultWriteTimeout, ShutdownTimeout: DefaultShutdownTimeout, SocketMode: DefaultSocketMode}
	t, ok := l.table(v, p, milterKeys)
	if !ok {
		return
	}
	if s, ok := t.str("listen"); ok {
		if _, _, err := sockspec.Parse(s); err != nil {
			l.errorf(p.key("listen"), "%v", err)
		}
		m.Listen = s
	}
	if d, ok := t.duration("read_timeout"); ok {
		m.ReadTimeout = d
	}
	if d, ok := t.duration("write_timeout"); ok {
		m.WriteTimeout = d
	}
	if d, ok := t.duration("shutdown_timeout"); ok {
		if d == 0 {
			l.errorf(p.key("shutdown_timeout"), "must be positive")
		}
		m.ShutdownTimeout = d
	}
	if s, ok := t.str("socket_mode"); ok {
		mode, err := strconv.ParseUint(s, 8, 32)
		switch {
		case err != nil || len(s) < 3:
			l.errorf(p.key("socket_mode"), `%q is not an octal mode such as "0660"`, s)
		case mode&^0o777 != 0:
			l.errorf(p.key("socket_mode"), "%q has bits beyond 0777", s)
		case mode&0o200 == 0:
			l.errorf(p.key("socket_mode"), "%q: the owner must be able to write the socket", s)
		default:
			m.SocketMode = os.FileMode(mode)
		}
	}
	if s, ok := t.str("socket_group"); ok {
		if strings.ContainsAny(s, ": /\t") {
			l.errorf(p.key("socket_group"), "%q is not a group name", s)
		}
		m.SocketGroup = s
	}
}

// reportSection reads [report].
func (l *loader) reportSection(v any, r *Report) {
	p := path{{key: "report"}}
	*r = Report{Addresses: "full", WebhookTimeout: 5 * time.Second}
	t, ok := l.table(v, p, reportKeys)
	if !ok {
		return
	}
	if s, ok := t.str("transactions"); ok {
		if s != "" && !filepath.IsAbs(s) {
			l.errorf(p.key("transactions"), "%q is not an absolute path", s)
		}
		r.Transactions = s
	}
	if s, ok := t.str("addresses"); ok {
		switch s {
		case "full", "domain", "none":
			r.Addresses = s
		default:
			l.errorf(p.key("addresses"), "%q: want full, domain or none", s)
		}
	}
	if b, ok := t.boolean("measure_size"); ok {
		r.MeasureSize = b
	}
	if s, ok := t.str("incidents"); ok {
		if s != "" && !filepath.IsAbs(s) {
			l.errorf(p.key("incidents"), "%q is not an absolute path", s)
		}
		r.Incidents = s
	}
	if s, ok := t.str("webhook"); ok && s != "" {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			l.errorf(p.key("webhook"), "%q is not an absolute http or https URL", s)
		}
		r.Webhook = s
	}
	if d, ok := t.duration("webhook_timeout"); ok && d > 0 {
		r.WebhookTimeout = d
	}
	if s, ok := t.str("syslog"); ok && s != "" {
		if _, _, err := report.ParseSyslogAddress(s); err != nil {
			l.errorf(p.key("syslog"), "%v", err)
		}
		r.Syslog = s
	}
	if s, ok := t.str("syslog_facility"); ok {
		if _, err := report.ParseSyslogFacility(s); err != nil {
			l.errorf(p.key("syslog_facility"), "%v", err)
		}
		r.SyslogFacility = s
	}
	for _, f := range []struct {
		key string
		to  *string
	}{{"syslog_tag", &r.SyslogTag}, {"syslog_hostname", &r.SyslogHostname}} {
		if s, ok := t.str(f.key); ok {
			if s == "" || len(s) > 48 || strings.ContainsAny(s, " []=\"") || checkText(s, 48) != nil {
				l.errorf(p.key(f.key), "%q: want 1-48 printable characters without spaces", s)
			}
			*f.to = s
		}
	}
	if n, ok := t.size("syslog_max_size"); ok {
		if n < 480 || n > 65000 {
			l.errorf(p.key("syslog_max_size"), "must be 480-65000 octets")
		}
		r.SyslogMaxSize = n
	}
}

// admin reads [admin]. The listener is off unless listen is set, and it
// binds loopback only unless allow_remote says otherwise: it exposes
// operational data and, later, bypass management.
func (l *loader) admin(v any, a *Admin) {
	p := path{{key: "admin"}}
	t, ok := l.table(v, p, adminKeys)
	if !ok {
		return
	}
	remote, _ := t.boolean("allow_remote")
	if f, ok := t.str("token_file"); ok {
		if f != "" && !filepath.IsAbs(f) {
			l.errorf(p.key("token_file"), "%q is not an absolute path", f)
		}
		a.TokenFile = f
	}
	s, ok := t.str("listen")
	if !ok || s == "" {
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		l.errorf(p.key("listen"), `%q is not host:port, e.g. "127.0.0.1:10029"`, s)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		l.errorf(p.key("listen"), "%q: port must be 1-65535", s)
		return
	}
	ip, err := netip.ParseAddr(host)
	loopback := host == "localhost" || (err == nil && ip.IsLoopback())
	if !loopback && !remote {
		l.errorf(p.key("listen"), "%q is not a loopback address; set allow_remote = true to expose the admin listener", s)
		return
	}
	a.Listen = s
}

func (l *loader) limits(v any, lim *opes.Limits) {
	p := path{{key: "limits"}}
	*lim = opes.Limits{
		MaxHeaderFields: DefaultMaxHeaderFields,
		MaxHeaderBytes:  DefaultMaxHeaderBytes,
		Body:            opes.BodyOptions{MaxMemory: DefaultBodyMemory},
	}
	t, ok := l.table(v, p, limitsKeys)
	if !ok {
		return
	}
	if n, ok := t.integer("max_message_size"); ok {
		if n < 0 {
			l.errorf(p.key("max_message_size"), "must not be negative (0 means unlimited)")
		}
		lim.MaxMessageSize = n
	}
	// For the others 0 keeps the default, as it does in opes.
	if n, ok := t.size("max_header_fields"); ok && n > 0 {
		lim.MaxHeaderFields = n
	}
	if n, ok := t.size("max_header_bytes"); ok && n > 0 {
		lim.MaxHeaderBytes = n
	}
	if n, ok := t.size("body_memory"); ok && n > 0 {
		lim.Body.MaxMemory = n
	}
	if s, ok := t.str("temp_dir"); ok {
		if s != "" && !filepath.IsAbs(s) {
			l.errorf(p.key("temp_dir"), "%q is not an absolute path", s)
		}
		lim.Body.TempDir = s
	}
}
