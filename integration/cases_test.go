package integration

// Integration cases as data: every file integration/cases/*.case is one SMTP
// scenario, run by TestCases against real Postfix (subtest postfix/<case>)
// and against real Sendmail (subtest sendmail/<case>), each with its own
// smtp-sink and opes-milter instance. cases/README.md has the same
// reference with examples.
//
// Case file format. One directive per line; blank lines and lines whose
// first non-blank character is '#' are ignored (except "|" lines, which are
// taken verbatim). A directive may be prefixed by "[postfix] " or
// "[sendmail] ": it then applies to that MTA only.
//
// Setup (anywhere in the file, usually on top):
//
//	policy NAME        required: a file in cases/policies/, or "default" for
//	                   the daemon's embedded default policy
//	milter tcp|unix    how the MTA reaches the milter (default tcp)
//	mta NAME...        run only against these MTAs (default: postfix sendmail)
//	set NAME VALUE     defines ${NAME} (VALUE is literal text)
//
// The SMTP session, in order:
//
//	connect            open a new connection (closing the previous one); the
//	                   "<" lines that follow check the greeting. Without it the
//	                   first ">" connects and the greeting must be 220.
//	> LINE             send LINE and CRLF, read one complete reply
//	| TEXT             one line of message data ("|" alone: an empty line),
//	                   sent verbatim (CRLF line ends, dot-stuffed) by "> ."
//	> .                send the collected "|" lines and the final ".", read
//	                   the reply (send "> DATA" first)
//	< REGEX            the next reply line must match REGEX (RE2) entirely,
//	                   e.g. "< 550-5\.7\.1 OPES-System: .*"
//	<...               any number of reply lines, none included
//	closed             the server has closed the connection (also right
//	                   after a command it answered by closing, with no reply)
//
// The "<" lines after a command must account for every line of its reply,
// in order. A command without "<" lines only needs a 2xx or 3xx reply.
//
// Delivered mail, checked when reached (usually after the session):
//
//	message REGEX      wait (up to 10 s) for the delivered message whose
//	                   Subject matches REGEX entirely; the lines below check it
//	from ADDR          the envelope sender at the sink
//	rcpt ADDR...       the envelope recipients at the sink, in any order
//	                   (Sendmail relays them in reverse order)
//	field N REGEX      header field N (0 = the first field the MTA sent; the
//	                   sink's own Received is not counted), unfolded as RFC
//	                   5322 does (line breaks removed, the white space after
//	                   them kept), matches REGEX entirely
//	has REGEX          some header field matches REGEX entirely (unfolded)
//	lacks REGEX        no header field matches REGEX entirely (unfolded)
//	count N REGEX      exactly N header fields match REGEX entirely
//	trace URI ID       fields 0 and 1 are OPES-System and OPES-Via, with one
//	                   space after the colon, every line at most 78 octets;
//	                   both parse with opes.ParseTraceList; OPES-System is the
//	                   single entry "URI; id=ID" and OPES-Via starts with it
//	raw                followed by "|" lines: these lines (variables
//	                   expanded) appear in the delivered header verbatim and
//	                   consecutively
//	nomessage REGEX    no delivered message has a Subject matching REGEX
//	messages N         exactly N messages reached the sink
//
// nomessage and messages wait 300 ms once, for stragglers.
//
// Variables, expanded in every argument: ${NAME} is a value set by "set" or
// captured by a named group (?P<NAME>...) of an earlier "<" regex; in
// regular expressions it stands for the literal text. Built in:
//
//	${addr}         the prefix Sendmail puts before the text of the first line
//	                of a MAIL or RCPT reply: "<ADDRESS>... " for the address
//	                of the current command, quoted; empty under Postfix
//	${queued:NAME}  the text of a 250 reply to the end of data, capturing the
//	                queue ID as NAME: "2.0.0 Ok: queued as ID" (Postfix),
//	                "2.0.0 ID Message accepted for delivery" (Sendmail)
//	${host}         the MTA's host name (mta.example.test, mta-sm.example.test)
//	${mta}          postfix or sendmail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// caseMTAs are the MTAs every case runs against, in this order.
var caseMTAs = []string{"postfix", "sendmail"}

type caseLine struct {
	no  int
	mta string // "" = every MTA
	kw  string
	arg string
	raw []string // "|" lines of a raw directive
}

type testCase struct {
	name, path string
	policy     string
	unix       bool
	mtas       []string
	lines      []caseLine
}

func (c *testCase) pos(l caseLine) string { return fmt.Sprintf("%s:%d", c.path, l.no) }

var (
	mtaPrefix  = regexp.MustCompile(`^\[([a-z]+)\]\s+(.*)$`)
	caseKWArgs = map[string]bool{ // keyword -> needs an argument
		"policy": true, "milter": true, "mta": true, "set": true, "connect": false, ">": true, "|": false,
		"<": true, "<...": false, "closed": false, "message": true, "from": true, "rcpt": true,
		"field": true, "has": true, "lacks": true, "count": true, "trace": true, "raw": false,
		"nomessage": true, "messages": true, "body": true, "nobody": true,
	}
)

func parseCase(path string) (*testCase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := &testCase{name: strings.TrimSuffix(filepath.Base(path), ".case"), path: path, mtas: caseMTAs}
	var errs []string
	fail := func(no int, format string, a ...any) {
		errs = append(errs, fmt.Sprintf("%s:%d: %s", path, no, fmt.Sprintf(format, a...)))
	}
	inRaw := -1 // index in c.lines of the raw directive that "|" lines extend
	for i, text := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		no := i + 1
		l := caseLine{no: no}
		if m := mtaPrefix.FindStringSubmatch(text); m != nil {
			if !slices.Contains(caseMTAs, m[1]) {
				fail(no, "unknown MTA %q (want one of %v)", m[1], caseMTAs)
				continue
			}
			l.mta, text = m[1], m[2]
		}
		trimmed := strings.TrimSpace(text)
		if !strings.HasPrefix(text, "|") && (trimmed == "" || trimmed[0] == '#') {
			continue
		}
		switch {
		case strings.HasPrefix(text, "|"):
			l.kw = "|"
			if text != "|" {
				if !strings.HasPrefix(text, "| ") {
					fail(no, `a data line is "| TEXT" or "|" alone`)
					continue
				}
				l.arg = text[2:]
			}
		case trimmed == "<...":
			l.kw = "<..."
		case strings.HasPrefix(text, "> ") || strings.HasPrefix(text, "< "):
			l.kw, l.arg = text[:1], strings.TrimRight(text[2:], " \t")
		default:
			l.kw, l.arg, _ = strings.Cut(trimmed, " ")
			l.arg = strings.TrimSpace(l.arg)
		}
		need, ok := caseKWArgs[l.kw]
		switch {
		case !ok:
			fail(no, "unknown directive %q", l.kw)
			continue
		case need && l.arg == "":
			fail(no, "%s needs an argument", l.kw)
			continue
		case !need && l.arg != "" && l.kw != "|":
			fail(no, "%s takes no argument", l.kw)
			continue
		}
		if l.kw == "|" && inRaw >= 0 {
			c.lines[inRaw].raw = append(c.lines[inRaw].raw, l.arg)
			continue
		}
		inRaw = -1
		switch l.kw {
		case "policy":
			c.policy = l.arg
			if l.arg != "default" {
				if _, err := os.Stat(filepath.Join("cases", "policies", l.arg)); err != nil {
					fail(no, "policy: %v", err)
				}
			}
			continue
		case "milter":
			if l.arg != "tcp" && l.arg != "unix" {
				fail(no, "milter: want tcp or unix, not %q", l.arg)
			}
			c.unix = l.arg == "unix"
			continue
		case "mta":
			c.mtas = strings.Fields(l.arg)
			for _, m := range c.mtas {
				if !slices.Contains(caseMTAs, m) {
					fail(no, "unknown MTA %q", m)
				}
			}
			continue
		case "raw":
			inRaw = len(c.lines)
		case "field", "count":
			n, _, _ := strings.Cut(l.arg, " ")
			if _, err := strconv.Atoi(n); err != nil || !strings.Contains(l.arg, " ") {
				fail(no, "%s N REGEX: %q", l.kw, l.arg)
			}
		case "messages":
			if _, err := strconv.Atoi(l.arg); err != nil {
				fail(no, "messages N: %q", l.arg)
			}
		case "set":
			if k, _, ok := strings.Cut(l.arg, " "); !ok || !varName.MatchString(k) {
				fail(no, "set NAME VALUE: %q", l.arg)
			}
		case "trace":
			if len(strings.Fields(l.arg)) != 2 {
				fail(no, "trace URI ID: %q", l.arg)
			}
		}
		c.lines = append(c.lines, l)
	}
	if c.policy == "" {
		fail(1, "no policy line")
	}
	for _, l := range c.lines {
		if l.kw == "raw" && len(l.raw) == 0 {
			fail(l.no, `raw needs "|" lines after it`)
		}
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return c, nil
}

func TestCases(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("cases", "*.case"))
	if len(files) == 0 {
		t.Fatal("no cases/*.case files")
	}
	var cases []*testCase
	for _, f := range files {
		c, err := parseCase(f)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, c)
	}
	for _, mta := range caseMTAs {
		t.Run(mta, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					if !slices.Contains(c.mtas, mta) {
						t.Skipf("%s: not run against %s (mta line)", c.path, mta)
					}
					t.Parallel()
					runCase(t, c, mta)
				})
			}
		})
	}
}

// caseRun is one case against one MTA.
type caseRun struct {
	t    *testing.T
	c    *testCase
	mta  string
	addr string
	sink *Sink
	vars map[string]string

	conn    *SMTPClient
	data    []string // "|" lines waiting for "> ."
	cmd     string   // current command line (for ${addr})
	reply   *Step    // the reply the "<" lines check
	exps    []caseLine
	dump    *Dump
	graced  bool
	started time.Time
}

func runCase(t *testing.T, c *testCase, mta string) {
	Require(t)
	r := &caseRun{t: t, c: c, mta: mta, vars: map[string]string{}, started: time.Now()}
	r.sink = StartSink(t)
	policy := ""
	if c.policy != "default" {
		b, err := os.ReadFile(filepath.Join("cases", "policies", c.policy))
		if err != nil {
			t.Fatal(err)
		}
		policy = string(b)
	}
	m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: policy, Unix: c.unix})
	r.addr, r.vars["host"] = startMTA(t, mta, m, r.sink)
	r.vars["mta"] = mta
	setup := time.Since(r.started)
	t.Cleanup(func() {
		if t.Failed() {
			if r.conn != nil {
				t.Logf("session:\n%s", r.conn.Transcript())
			}
			for i, d := range r.sink.Dumps() {
				t.Logf("message %d at the sink:\n%s", i+1, d.Raw)
			}
		}
	})
	for _, l := range c.lines {
		if l.mta != "" && l.mta != mta {
			continue
		}
		r.do(l)
	}
	r.flush()
	if r.conn != nil {
		r.conn.Close()
	}
	t.Logf("%s: set-up %v, case %v", mta, setup.Round(time.Millisecond), (time.Since(r.started) - setup).Round(time.Millisecond))
}

func (r *caseRun) errorf(l caseLine, format string, a ...any) {
	r.t.Helper()
	r.t.Errorf("%s: %s", r.c.pos(l), fmt.Sprintf(format, a...))
}

func (r *caseRun) fatalf(l caseLine, format string, a ...any) {
	r.t.Helper()
	r.t.Fatalf("%s: %s", r.c.pos(l), fmt.Sprintf(format, a...))
}

func (r *caseRun) do(l caseLine) {
	r.t.Helper()
	switch l.kw {
	case "<", "<...":
		if r.reply == nil {
			r.fatalf(l, "%s without a command or connect before it", l.kw)
		}
		r.exps = append(r.exps, l)
		return
	case "|":
		r.data = append(r.data, l.arg)
		return
	case "closed":
		// A command answered by the server closing the connection: the
		// "closed" line is its expectation.
		if r.reply != nil && len(r.exps) == 1 && len(r.reply.Reply.Lines) == 0 && isEOF(r.reply.Err) {
			r.reply, r.exps = nil, nil
		}
	}
	r.flush()
	switch l.kw {
	case "set":
		k, v, _ := strings.Cut(l.arg, " ")
		r.vars[k] = strings.TrimSpace(r.expand(l, v, false))
	case "connect":
		r.connect(l)
	case ">":
		if r.conn == nil {
			r.connect(l)
			if g := r.reply.Reply; g.Code != 220 {
				r.fatalf(l, "greeting %s, want 220 (write connect and < lines to expect another)", g)
			}
			r.reply = nil
		}
		line := r.expand(l, l.arg, false)
		r.cmd = line
		var rep Reply
		var err error
		if line == "." {
			msg := strings.Join(r.data, "\n") + "\n"
			r.data = nil
			rep, err = r.conn.exchange(".", EncodeData([]byte(msg)))
		} else {
			rep, err = r.conn.TryCmd(line)
		}
		r.reply = &Step{Cmd: line, Reply: rep, Err: err}
		r.exps = []caseLine{l} // the command itself, for positions
	case "closed":
		r.closed(l)
	case "message":
		re := r.regexp(l, l.arg)
		d := r.sink.WaitDump(r.t, func(d Dump) bool { return re.MatchString(d.Header().Get("Subject")) }, 10*time.Second)
		r.dump = &d
	case "from", "rcpt", "field", "has", "lacks", "count", "trace", "raw", "body", "nobody":
		if r.dump == nil {
			r.fatalf(l, "%s before any message line", l.kw)
		}
		r.checkMessage(l)
	case "nomessage", "messages":
		r.grace()
		dumps := r.sink.Dumps()
		if l.kw == "messages" {
			if n, _ := strconv.Atoi(l.arg); len(dumps) != n {
				r.errorf(l, "%d message(s) at the sink, want %d", len(dumps), n)
			}
			return
		}
		re := r.regexp(l, l.arg)
		for _, d := range dumps {
			if s := d.Header().Get("Subject"); re.MatchString(s) {
				r.errorf(l, "a message with Subject %q reached the sink", s)
			}
		}
	default:
		r.fatalf(l, "directive %q not handled", l.kw)
	}
}

func (r *caseRun) connect(l caseLine) {
	r.t.Helper()
	if r.conn != nil {
		r.conn.Close()
	}
	c, err := TryDial(r.t, r.addr)
	if err != nil {
		r.fatalf(l, "connect %s: %v", r.addr, err)
	}
	r.conn, r.cmd = c, ""
	r.reply = &Step{Cmd: "(greeting)", Reply: c.Greeting()}
	r.exps = []caseLine{l}
}

// flush checks the current reply against the "<" lines collected for it.
func (r *caseRun) flush() {
	r.t.Helper()
	if r.reply == nil {
		return
	}
	st, at, exps := r.reply, r.exps[0], r.exps[1:]
	r.reply, r.exps = nil, nil
	if len(exps) == 0 {
		if st.Err != nil {
			r.errorf(at, "%s: %v (got %s)", st.Cmd, st.Err, st.Reply)
		} else if !st.Reply.Positive() {
			r.errorf(at, "%s: reply %s, want 2xx or 3xx", st.Cmd, st.Reply)
		}
		return
	}
	res := make([]*regexp.Regexp, len(exps))
	for i, e := range exps {
		if e.kw == "<" {
			res[i] = r.regexp(e, e.arg)
		}
	}
	caps, ok := matchReply(res, st.Reply.Lines)
	if !ok {
		var want []string
		for _, e := range exps {
			if e.kw == "<..." {
				want = append(want, "  <...")
			} else {
				want = append(want, "  < "+r.expand(e, e.arg, true))
			}
		}
		got := "  (no reply)"
		if len(st.Reply.Lines) > 0 {
			got = "  " + strings.Join(st.Reply.Lines, "\n  ")
		}
		if st.Err != nil {
			got += "\n  (" + st.Err.Error() + ")"
		}
		r.errorf(at, "%s: reply does not match\ngot:\n%s\nwant:\n%s", st.Cmd, got, strings.Join(want, "\n"))
		return
	}
	for k, v := range caps {
		r.vars[k] = v
	}
}

// matchReply matches lines against res; a nil entry ("<...") matches any
// run of lines. It returns the named groups of the matching regexps.
func matchReply(res []*regexp.Regexp, lines []string) (map[string]string, bool) {
	if len(res) == 0 {
		if len(lines) == 0 {
			return map[string]string{}, true
		}
		return nil, false
	}
	if res[0] == nil {
		for skip := 0; skip <= len(lines); skip++ {
			if caps, ok := matchReply(res[1:], lines[skip:]); ok {
				return caps, true
			}
		}
		return nil, false
	}
	if len(lines) == 0 {
		return nil, false
	}
	m := res[0].FindStringSubmatch(lines[0])
	if m == nil {
		return nil, false
	}
	caps, ok := matchReply(res[1:], lines[1:])
	if !ok {
		return nil, false
	}
	for i, name := range res[0].SubexpNames() {
		if name != "" {
			if _, later := caps[name]; !later {
				caps[name] = m[i]
			}
		}
	}
	return caps, true
}

func (r *caseRun) closed(l caseLine) {
	r.t.Helper()
	if r.conn == nil {
		r.fatalf(l, "closed: no connection")
	}
	steps := r.conn.Transcript().Steps
	if n := len(steps); n > 0 && isEOF(steps[n-1].Err) {
		return
	}
	r.conn.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := r.conn.r.ReadString('\n')
	if err != io.EOF || line != "" {
		r.errorf(l, "connection not closed by the server: read %q, %v", line, err)
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}`)
var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expand replaces ${...} references; in a regexp, values are quoted.
func (r *caseRun) expand(l caseLine, s string, inRegexp bool) string {
	r.t.Helper()
	quote := func(v string) string {
		if inRegexp {
			return regexp.QuoteMeta(v)
		}
		return v
	}
	var bad []string
	out := varRef.ReplaceAllStringFunc(s, func(ref string) string {
		m := varRef.FindStringSubmatch(ref)
		name, arg := m[1], m[2]
		switch {
		case name == "queued" && arg != "":
			if r.mta == "sendmail" {
				return `2\.0\.0 (?P<` + arg + `>[0-9A-Za-z]+) Message accepted for delivery`
			}
			return `2\.0\.0 Ok: queued as (?P<` + arg + `>[0-9A-Za-z]+)`
		case arg != "":
			bad = append(bad, ref)
			return ref
		case name == "addr":
			if r.mta != "sendmail" {
				return ""
			}
			return quote(cmdAddress(r.cmd) + "... ")
		}
		if v, ok := r.vars[name]; ok {
			return quote(v)
		}
		bad = append(bad, ref)
		return ref
	})
	if len(bad) > 0 {
		r.fatalf(l, "undefined %s (captured or set so far: %v)", strings.Join(bad, ", "), r.varNames())
	}
	return out
}

func (r *caseRun) varNames() []string {
	var n []string
	for k := range r.vars {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// cmdAddress returns "<addr>" from "MAIL FROM:<addr> ..." or "RCPT TO:<addr>".
func cmdAddress(cmd string) string {
	i := strings.IndexByte(cmd, '<')
	j := strings.IndexByte(cmd, '>')
	if i < 0 || j < i {
		return ""
	}
	return cmd[i : j+1]
}

func (r *caseRun) regexp(l caseLine, s string) *regexp.Regexp {
	r.t.Helper()
	re, err := regexp.Compile(`^(?:` + r.expand(l, s, true) + `)$`)
	if err != nil {
		r.fatalf(l, "regexp: %v", err)
	}
	return re
}

func (r *caseRun) grace() {
	if !r.graced {
		r.graced = true
		time.Sleep(300 * time.Millisecond)
	}
}

// headerField is one field of a delivered header.
type headerField struct {
	lines []string // physical lines, as delivered
}

func (f headerField) name() string {
	n, _, _ := strings.Cut(f.lines[0], ":")
	return n
}

// unfolded joins the lines, removing only the line breaks (RFC 5322 §2.2.3).
func (f headerField) unfolded() string { return strings.Join(f.lines, "") }

// value is the raw value after the colon, line breaks kept.
func (f headerField) value() string {
	_, v, _ := strings.Cut(strings.Join(f.lines, "\n"), ":")
	return v
}

func headerFields(d Dump) []headerField {
	var out []headerField
	for _, l := range d.HeaderLines() {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(out) > 0 {
			out[len(out)-1].lines = append(out[len(out)-1].lines, l)
			continue
		}
		out = append(out, headerField{lines: []string{l}})
	}
	return out
}

func (r *caseRun) checkMessage(l caseLine) {
	r.t.Helper()
	d := *r.dump
	fields := headerFields(d)
	subject := d.Header().Get("Subject")
	switch l.kw {
	case "from":
		if want := r.expand(l, l.arg, false); d.Mail != want {
			r.errorf(l, "message %q: envelope sender <%s>, want <%s>", subject, d.Mail, want)
		}
	case "rcpt":
		want := strings.Fields(r.expand(l, l.arg, false))
		got := slices.Clone(d.Rcpts)
		sort.Strings(want)
		sort.Strings(got)
		if !slices.Equal(got, want) {
			r.errorf(l, "message %q: envelope recipients %v, want %v (any order)", subject, d.Rcpts, want)
		}
	case "field":
		n, re, _ := strings.Cut(l.arg, " ")
		i, _ := strconv.Atoi(n)
		rx := r.regexp(l, strings.TrimSpace(re))
		if i >= len(fields) {
			r.errorf(l, "message %q: no header field %d (%d fields)", subject, i, len(fields))
		} else if u := fields[i].unfolded(); !rx.MatchString(u) {
			r.errorf(l, "message %q: header field %d is\n  %q\nwant it to match\n  %s", subject, i, u, rx)
		}
	case "has", "lacks", "count":
		arg, want := l.arg, 1
		if l.kw == "count" {
			n, re, _ := strings.Cut(l.arg, " ")
			want, _ = strconv.Atoi(n)
			arg = strings.TrimSpace(re)
		}
		rx := r.regexp(l, arg)
		n := 0
		for _, f := range fields {
			if rx.MatchString(f.unfolded()) {
				n++
			}
		}
		switch {
		case l.kw == "has" && n == 0, l.kw == "lacks" && n > 0, l.kw == "count" && n != want:
			r.errorf(l, "message %q: %d header field(s) match %s (%s)", subject, n, rx, l.kw)
		}
	case "body", "nobody":
		// The body as delivered (LF line ends); (?m) lets ^ and $ match
		// at line breaks.
		rx := r.regexp(l, "(?s:.*)(?m:"+l.arg+")(?s:.*)")
		if found := rx.Match(d.Body()); found != (l.kw == "body") {
			r.errorf(l, "message %q: body %s %s:\n%s", subject, map[bool]string{true: "matches", false: "does not match"}[found], rx, d.Body())
		}
	case "trace":
		a := strings.Fields(r.expand(l, l.arg, false))
		r.checkTrace(l, fields, a[0], a[1])
	case "raw":
		var lines []string
		for _, x := range l.raw {
			lines = append(lines, r.expand(l, x, false))
		}
		want := strings.Join(lines, "\n") + "\n"
		if h := strings.Join(d.HeaderLines(), "\n") + "\n"; !strings.Contains(h, want) {
			r.errorf(l, "message %q: header lacks, byte for byte:\n%s", subject, want)
		}
	}
}

// checkTrace is the trace directive (PROFILE §2).
func (r *caseRun) checkTrace(l caseLine, fields []headerField, uri, id string) {
	r.t.Helper()
	if len(fields) < 2 || fields[0].name() != opes.FieldSystem || fields[1].name() != opes.FieldVia {
		var names []string
		for _, f := range fields {
			names = append(names, f.name())
		}
		r.errorf(l, "trace block not on top: fields %v", names)
		return
	}
	for _, f := range fields[:2] {
		if v := f.value(); !strings.HasPrefix(v, " ") || strings.HasPrefix(v, "  ") || strings.HasPrefix(v, " \t") {
			r.errorf(l, "%s: want exactly one space after the colon: %q", f.name(), f.lines[0])
		}
		for _, pl := range f.lines {
			if len(pl) > 78 {
				r.errorf(l, "%s: line over 78 octets: %q", f.name(), pl)
			}
		}
	}
	sys, err := opes.ParseTraceList(fields[0].value(), 10)
	if err != nil || len(sys) != 1 {
		r.errorf(l, "OPES-System %q: %v (%d entries)", fields[0].value(), err, len(sys))
		return
	}
	if got, _ := sys[0].Param("id"); sys[0].URI != uri || got != id {
		r.errorf(l, "OPES-System is %s; id=%s, want %s; id=%s", sys[0].URI, got, uri, id)
	}
	via, err := opes.ParseTraceList(fields[1].value(), 50)
	if err != nil {
		r.errorf(l, "OPES-Via %q: %v", fields[1].value(), err)
		return
	}
	if got, _ := via[0].Param("id"); via[0].URI != uri || got != id {
		r.errorf(l, "OPES-Via starts with %s; id=%s, want %s; id=%s", via[0].URI, got, uri, id)
	}
}

// The case parser itself: the format's corner cases, without an MTA.
func TestParseCase(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "x.case")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := parseCase(write("# c\npolicy default\n\n[sendmail] > EHLO x\n< 250 .*\n<...\n> DATA\n| a\n|\n| \tb\n> .\nmessage s\nraw\n| X: 1\n| \tfolded\nrcpt a b\n"))
	if err != nil {
		t.Fatal(err)
	}
	var kws []string
	for _, l := range c.lines {
		kws = append(kws, l.mta+l.kw)
	}
	if got := strings.Join(kws, " "); got != "sendmail> < <... > | | | > message raw rcpt" {
		t.Errorf("directives %q", got)
	}
	if c.lines[5].arg != "" || c.lines[6].arg != "\tb" || strings.Join(c.lines[9].raw, "|") != "X: 1|\tfolded" {
		t.Errorf("data lines %q %q raw %q", c.lines[5].arg, c.lines[6].arg, c.lines[9].raw)
	}
	for _, bad := range []string{
		"> EHLO x\n",                   // no policy
		"policy default\nfrobnicate\n", // unknown directive
		"policy default\n[exim] > EHLO\n",
		"policy default\nmilter udp\n",
		"policy default\nraw\n",
		"policy default\nfield x .*\n",
		"policy nosuchfile.toml\n",
		"policy default\n|x\n",
	} {
		if _, err := parseCase(write(bad)); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
	re := func(s ...string) []*regexp.Regexp {
		var out []*regexp.Regexp
		for _, x := range s {
			if x == "" {
				out = append(out, nil)
			} else {
				out = append(out, regexp.MustCompile("^(?:"+x+")$"))
			}
		}
		return out
	}
	if caps, ok := matchReply(re("a", "", "(?P<id>c)"), []string{"a", "b", "b", "c"}); !ok || caps["id"] != "c" {
		t.Errorf("glob match: %v %v", caps, ok)
	}
	if _, ok := matchReply(re("a"), []string{"a", "b"}); ok {
		t.Errorf("extra reply line accepted")
	}
	if _, ok := matchReply(re("", "x"), []string{"a", "b"}); ok {
		t.Errorf("missing line accepted")
	}
}
