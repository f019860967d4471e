package childmilter

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/opes"
)

// OpenDKIM can add header fields, refuse and discard, but no milter in
// Debian's archive that runs without a daemon stack of its own does every
// other modification. These tests use a child milter written with
// go-milter's server side, over a real unix socket and the real protocol,
// to cover every answer and modification a milter can give.

// eventLog records what the child received, in order.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf(format, args...))
}

func (l *eventLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// scripted is a child milter: it logs every event with the macros it
// asked for, and answers with the functions the test sets (nil: continue).
type scripted struct {
	milter.NoOpMilter
	log     *eventLog
	connect *milter.Response
	mail    *milter.Response
	rcpt    func(rcpt string) *milter.Response
	eom     func(m milter.Modifier) (*milter.Response, error)
}

func macros(m milter.Modifier, names ...string) string {
	var parts []string
	for _, n := range names {
		if v, ok := m.GetEx(n); ok {
			parts = append(parts, n+"="+v)
		}
	}
	return strings.Join(parts, " ")
}

func orContinue(r *milter.Response) *milter.Response {
	if r == nil {
		return milter.RespContinue
	}
	return r
}

func (s *scripted) Connect(host, family string, port uint16, addr string, m milter.Modifier) (*milter.Response, error) {
	s.log.add("connect %s %s %d %s [%s]", host, family, port, addr, macros(m, "j", "{daemon_name}", "{client_addr}", "{client_port}", "{client_name}"))
	return orContinue(s.connect), nil
}

func (s *scripted) Helo(name string, m milter.Modifier) (*milter.Response, error) {
	s.log.add("helo %s", name)
	return milter.RespContinue, nil
}

func (s *scripted) MailFrom(from, args string, m milter.Modifier) (*milter.Response, error) {
	s.log.add("mail %s [%s]", from, macros(m, "{mail_addr}", "{auth_authen}", "i"))
	return orContinue(s.mail), nil
}

func (s *scripted) RcptTo(rcpt, args string, m milter.Modifier) (*milter.Response, error) {
	s.log.add("rcpt %s [%s]", rcpt, macros(m, "{rcpt_addr}"))
	if s.rcpt != nil {
		return s.rcpt(rcpt), nil
	}
	return milter.RespContinue, nil
}

func (s *scripted) Data(m milter.Modifier) (*milter.Response, error) {
	s.log.add("data")
	return milter.RespContinue, nil
}

func (s *scripted) Header(name, value string, m milter.Modifier) (*milter.Response, error) {
	s.log.add("header %s:%s", name, value)
	return milter.RespContinue, nil
}

func (s *scripted) Headers(m milter.Modifier) (*milter.Response, error) {
	s.log.add("eoh")
	return milter.RespContinue, nil
}

func (s *scripted) BodyChunk(chunk []byte, m milter.Modifier) (*milter.Response, error) {
	s.log.add("body %q", chunk)
	return milter.RespContinue, nil
}

func (s *scripted) EndOfMessage(m milter.Modifier) (*milter.Response, error) {
	s.log.add("eom [%s]", macros(m, "i"))
	if s.eom != nil {
		return s.eom(m)
	}
	return milter.RespAccept, nil
}

func (s *scripted) Abort(milter.Modifier) error {
	s.log.add("abort")
	return nil
}

// childMacros are the macros the scripted child asks for at negotiation,
// as libmilter's smfi_setsymlist does.
var childMacros = []struct {
	stage milter.MacroStage
	names []string
}{
	{milter.StageConnect, []string{"j", "{daemon_name}", "{client_addr}", "{client_port}", "{client_name}"}},
	{milter.StageMail, []string{"{mail_addr}", "{auth_authen}", "i"}},
	{milter.StageRcpt, []string{"{rcpt_addr}"}},
	{milter.StageEOM, []string{"i"}},
}

// startChild serves a new scripted milter per connection on a unix
// socket and returns the socket option for it.
func startChild(t *testing.T, script func(*scripted)) (string, *eventLog) {
	t.Helper()
	log := &eventLog{}
	opts := []milter.Option{
		milter.WithMilter(func() milter.Milter {
			s := &scripted{log: log}
			if script != nil {
				script(s)
			}
			return s
		}),
		milter.WithActions(milter.AllClientSupportedActionMasks),
		milter.WithProtocols(0),
	}
	for _, m := range childMacros {
		opts = append(opts, milter.WithMacroRequest(m.stage, m.names))
	}
	srv := milter.NewServer(opts...)
	sock := filepath.Join(shortTempDir(t), "child.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "unix:" + sock, log
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 500 {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReplayAndMacros(t *testing.T) {
	m := testMessage()
	want := []string{
		"connect localhost tcp4 41234 127.0.0.1 [j=mx1.example.net {daemon_name}=smtpd {client_addr}=127.0.0.1 {client_port}=41234 {client_name}=localhost]",
		"helo client.example.org",
		"mail alice@example.org [{mail_addr}=alice@example.org i=" + queueID + "]",
		"rcpt bob@example.net [{rcpt_addr}=bob@example.net]",
		"data",
	}
	for _, h := range m.header {
		want = append(want, "header "+h[0]+":"+strings.TrimLeft(h[1], " "))
	}
	want = append(want, "eoh", fmt.Sprintf("body %q", m.body), "eom [i="+queueID+"]")

	// Consulted at every stage or only at the end: the child sees the
	// same complete dialog.
	for _, stages := range []string{"", `stages = ["eom"]`, `stages = ["mail", "headers", "eom"]`} {
		t.Run(stages, func(t *testing.T) {
			sock, log := startChild(t, nil)
			proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q\n%s", sock, stages)), opes.OnErrorDefault)
			r := drive(t, proc, m)
			if r.stage != "eom" || r.outcome.Kind != opes.Continue {
				t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
			}
			wantTrace(t, via(t, r.outcome), "analyzed")
			if got := log.get(); !slices.Equal(got, want) {
				t.Errorf("child saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}

	t.Run("macros limited", func(t *testing.T) {
		sock, log := startChild(t, nil)
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q\nmacros = [\"{j}\", \"rcpt_addr\"]", sock)), opes.OnErrorDefault)
		drive(t, proc, m)
		got := log.get()
		if len(got) < 4 || got[0] != "connect localhost tcp4 41234 127.0.0.1 [j=mx1.example.net]" ||
			got[2] != "mail alice@example.org []" || got[3] != "rcpt bob@example.net [{rcpt_addr}=bob@example.net]" {
			t.Errorf("child saw\n%s", strings.Join(got, "\n"))
		}
	})
}

func TestChanges(t *testing.T) {
	m := testMessage()
	m.rcpts = []string{"bob@example.net", "carol@example.net"}
	tests := []struct {
		name   string
		eom    func(m milter.Modifier) error
		action string
		check  func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField)
	}{{
		name:   "add header",
		eom:    func(m milter.Modifier) error { return m.AddHeader("X-Child", "checked") },
		action: "header-added",
		check: func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField) {
			if f := fields[len(fields)-1]; f.Name != "X-Child" || f.Value != " checked" {
				t.Errorf("last field %+v", f)
			}
		},
	}, {
		name:   "insert header",
		eom:    func(m milter.Modifier) error { return m.InsertHeader(0, "X-Child", "on\n\ttwo lines") },
		action: "header-added",
		check: func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField) {
			if f := fields[len(fields)-1]; f.Name != "X-Child" || f.Value != " on\r\n\ttwo lines" {
				t.Errorf("last field %+v", f)
			}
		},
	}, {
		name: "change and delete header",
		eom: func(m milter.Modifier) error {
			if err := m.ChangeHeader(1, "Subject", "[ext] Quarterly figures"); err != nil {
				return err
			}
			return m.ChangeHeader(1, "Message-ID", "")
		},
		action: "modified",
		check: func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField) {
			for _, f := range fields {
				if f.Name == "Message-ID" {
					t.Errorf("Message-ID not deleted")
				}
				if f.Name == "Subject" && f.Value != " [ext] Quarterly figures" {
					t.Errorf("Subject %q", f.Value)
				}
			}
		},
	}, {
		name:   "replace body",
		eom:    func(m milter.Modifier) error { return m.ReplaceBody(strings.NewReader("new body\r\n")) },
		action: "modified",
		check: func(t *testing.T, o *opes.Outcome, _ []opes.HeaderField) {
			if o.Body == nil {
				t.Fatal("body not replaced")
			}
			b, _ := io.ReadAll(o.Body)
			if string(b) != "new body\r\n" {
				t.Errorf("body %q", b)
			}
		},
	}, {
		name:   "change sender",
		eom:    func(m milter.Modifier) error { return m.ChangeFrom("<bounces@example.org>", "") },
		action: "rewritten",
		check: func(t *testing.T, o *opes.Outcome, _ []opes.HeaderField) {
			if o.Sender == nil || o.Sender.Addr != "bounces@example.org" {
				t.Errorf("sender %+v", o.Sender)
			}
		},
	}, {
		name: "recipients",
		eom: func(m milter.Modifier) error {
			if err := m.AddRecipient("<archive@example.net>", ""); err != nil {
				return err
			}
			return m.DeleteRecipient("<carol@example.net>")
		},
		action: "rerouted",
		check: func(t *testing.T, o *opes.Outcome, _ []opes.HeaderField) {
			if len(o.AddRcpts) != 1 || o.AddRcpts[0].Addr != "archive@example.net" || !slices.Equal(o.DelRcpts, []string{"carol@example.net"}) {
				t.Errorf("added %+v, deleted %v", o.AddRcpts, o.DelRcpts)
			}
		},
	}, {
		name: "several kinds",
		eom: func(m milter.Modifier) error {
			if err := m.AddHeader("X-Child", "checked"); err != nil {
				return err
			}
			return m.ChangeFrom("<bounces@example.org>", "")
		},
		action: "modified",
	}, {
		name: "quarantine",
		eom: func(m milter.Modifier) error {
			if err := m.AddHeader("X-Child", "held"); err != nil {
				return err
			}
			return m.Quarantine("suspicious\r\nattachment")
		},
		action: "quarantined",
		check: func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField) {
			if o.Quarantine != "held by the child milter: suspicious attachment" {
				t.Errorf("quarantine %q", o.Quarantine)
			}
			if f := fields[len(fields)-1]; f.Name != "X-Child" {
				t.Errorf("the other changes of a quarantined message are lost: last field %+v", f)
			}
		},
	}, {
		name: "trace fields untouched",
		eom: func(m milter.Modifier) error {
			if err := m.AddHeader("OPES-Via", "https://evil.example/; action=analyzed"); err != nil {
				return err
			}
			if err := m.ChangeHeader(1, "OPES-System", "forged"); err != nil {
				return err
			}
			return m.InsertHeader(0, "opes-bypass", "*")
		},
		action: "analyzed",
		check: func(t *testing.T, o *opes.Outcome, fields []opes.HeaderField) {
			var trace []string
			for _, f := range fields {
				if strings.HasPrefix(strings.ToLower(f.Name), "opes-") {
					trace = append(trace, f.Name+":"+f.Value)
				}
			}
			if len(trace) != 2 || strings.Contains(strings.Join(trace, ""), "evil") || strings.Contains(strings.Join(trace, ""), "forged") {
				t.Errorf("trace fields %q", trace)
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock, _ := startChild(t, func(s *scripted) {
				s.eom = func(m milter.Modifier) (*milter.Response, error) {
					return milter.RespAccept, tc.eom(m)
				}
			})
			proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
			r := drive(t, proc, m)
			if r.stage != "eom" || r.outcome.Kind != opes.Continue {
				t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
			}
			wantTrace(t, via(t, r.outcome), tc.action)
			if tc.check != nil {
				tc.check(t, r.outcome, delivered(m, r.outcome))
			}
		})
	}
}

// TestChangeLaterOccurrence: a change or deletion of a later field of a
// name reaches the MTA as a change of that occurrence: the fields keep
// their places (no field is re-added at the end).
func TestChangeLaterOccurrence(t *testing.T) {
	m := testMessage()
	m.header = append(m.header, [2]string{"X-Tag", " one"}, [2]string{"Keywords", " k"}, [2]string{"X-Tag", " two"}, [2]string{"X-Tag", " three"})
	tests := []struct {
		index int
		value string
		want  []string
	}{
		{2, "TWO", []string{" one", " TWO", " three"}},
		{2, "", []string{" one", " three"}},
		{3, "", []string{" one", " two"}},
		{1, "ONE", []string{" ONE", " two", " three"}},
		{4, "four", []string{" one", " two", " three", " four"}},
		{5, "", []string{" one", " two", " three"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d=%q", tc.index, tc.value), func(t *testing.T) {
			sock, _ := startChild(t, func(s *scripted) {
				s.eom = func(m milter.Modifier) (*milter.Response, error) {
					return milter.RespAccept, m.ChangeHeader(tc.index, "X-Tag", tc.value)
				}
			})
			proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
			r := drive(t, proc, m)
			if r.outcome == nil || r.outcome.Kind != opes.Continue {
				t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
			}
			var got []string
			var names []string
			for _, f := range delivered(m, r.outcome) {
				names = append(names, f.Name)
				if f.Name == "X-Tag" {
					got = append(got, f.Value)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("X-Tag fields %q, want %q (header %v)", got, tc.want, names)
			}
			if !slices.Contains(names, "Keywords") {
				t.Errorf("an unrelated field was lost: %v", names)
			}
			if tc.index <= 3 {
				for _, c := range r.outcome.HeaderChanges {
					if c.Name == "X-Tag" && c.Kind == opes.AppendField {
						t.Errorf("a field was re-added instead of changed in place: %+v", r.outcome.HeaderChanges)
					}
				}
			}
		})
	}
}

// TestBadChangeChangesNothing: a change the processor would refuse fails
// the hook before any change is applied.
func TestBadChangeChangesNothing(t *testing.T) {
	sock, _ := startChild(t, func(s *scripted) {
		s.eom = func(m milter.Modifier) (*milter.Response, error) {
			if err := m.AddHeader("X-Good", "fine"); err != nil {
				return nil, err
			}
			return milter.RespAccept, m.AddHeader("X-Bad", "bell\x07")
		}
	})
	m := testMessage()
	for _, tc := range []struct {
		onError opes.OnError
		kind    opes.VerdictKind
	}{{opes.OnErrorDefault, opes.TempFail}, {opes.OnErrorContinue, opes.Continue}} {
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), tc.onError)
		r := drive(t, proc, m)
		if r.stage != "eom" || r.outcome.Kind != tc.kind {
			t.Fatalf("on_error %d: outcome at %s: %+v", tc.onError, r.stage, r.outcome)
		}
		if tc.kind == opes.TempFail {
			if r.outcome.Reply.Code != 451 || r.outcome.Reply.Enhanced != "4.3.0" {
				t.Errorf("reply %s", r.outcome.Reply)
			}
			continue
		}
		for _, f := range delivered(m, r.outcome) {
			if strings.HasPrefix(f.Name, "X-") {
				t.Errorf("field %s applied from a failed set of changes", f.Name)
			}
		}
		trace := via(t, r.outcome)
		if !strings.Contains(trace, svcURI+"; action=analyzed; status=failed") {
			t.Errorf("trace %q", trace)
		}
	}
}

func TestEnvelopeAnswers(t *testing.T) {
	greylist, err := milter.RejectWithCodeAndReason(451, "4.7.1 Greylisted, try again in 5 minutes")
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := milter.RejectWithCodeAndReason(550, "5.1.1 No such user here")
	if err != nil {
		t.Fatal(err)
	}
	m := testMessage()
	m.rcpts = []string{"bob@example.net", "nobody@example.net"}

	t.Run("mail tempfail", func(t *testing.T) {
		sock, log := startChild(t, func(s *scripted) { s.mail = greylist })
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
		r := drive(t, proc, m)
		if r.stage != "mail" || r.outcome.Kind != opes.TempFail {
			t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
		}
		rep := r.outcome.Reply
		if rep.Code != 451 || rep.Enhanced != "4.7.1" || rep.Lines[0] != "Greylisted, try again in 5 minutes" {
			t.Errorf("reply %s", rep)
		}
		wantTrace(t, strings.Join(strings.Fields(rep.String()), " "), "rejected")
		// ABORT reaches the child after the refusal was answered.
		waitFor(t, "the child to get ABORT", func() bool {
			got := log.get()
			return got[len(got)-1] == "abort"
		})
	})

	t.Run("one recipient refused", func(t *testing.T) {
		sock, log := startChild(t, func(s *scripted) {
			s.rcpt = func(rcpt string) *milter.Response {
				if strings.HasPrefix(rcpt, "nobody@") {
					return unknown
				}
				return milter.RespContinue
			}
		})
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
		r := drive(t, proc, m)
		if r.rcpts[0].Kind != opes.Continue || r.rcpts[1].Kind != opes.Reject {
			t.Fatalf("recipient outcomes %v, %v", r.rcpts[0].Kind, r.rcpts[1].Kind)
		}
		if rep := r.rcpts[1].Reply; rep.Code != 550 || rep.Enhanced != "5.1.1" || rep.Lines[0] != "No such user here" {
			t.Errorf("reply %s", rep)
		}
		if r.stage != "eom" || r.outcome.Kind != opes.Continue {
			t.Fatalf("message outcome at %s: %+v", r.stage, r.outcome)
		}
		if got := log.get(); !slices.Contains(got, "eom [i="+queueID+"]") {
			t.Errorf("the message did not reach the child: %q", got)
		}
	})

	t.Run("recipient refused while replayed", func(t *testing.T) {
		sock, _ := startChild(t, func(s *scripted) {
			s.rcpt = func(rcpt string) *milter.Response {
				if strings.HasPrefix(rcpt, "nobody@") {
					return unknown
				}
				return milter.RespContinue
			}
		})
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q\nstages = [\"eom\"]", sock)), opes.OnErrorDefault)
		r := drive(t, proc, m)
		if r.stage != "eom" || r.outcome.Kind != opes.Reject || r.outcome.Reply.Code != 550 || r.outcome.Reply.Enhanced != "5.1.1" {
			t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
		}
	})

	t.Run("discard at rcpt", func(t *testing.T) {
		sock, _ := startChild(t, func(s *scripted) {
			s.rcpt = func(string) *milter.Response { return milter.RespDiscard }
		})
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
		r := drive(t, proc, m)
		// The recipients stay; the message is the one discarded, refused
		// at DATA until the processor can send NDRs.
		for i, o := range r.rcpts {
			if o.Kind != opes.Continue {
				t.Errorf("recipient %d refused: %v", i, o.Kind)
			}
		}
		if r.stage != "data" || r.outcome.Kind == opes.Continue || !strings.Contains(r.outcome.Reply.Lines[0], "discarded by the child milter") {
			t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
		}
	})

	t.Run("accept at connect", func(t *testing.T) {
		sock, log := startChild(t, func(s *scripted) { s.connect = milter.RespAccept })
		proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", sock)), opes.OnErrorDefault)
		r := drive(t, proc, m)
		if r.stage != "eom" || r.outcome.Kind != opes.Continue {
			t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
		}
		if got := log.get(); len(got) != 1 || !strings.HasPrefix(got[0], "connect ") {
			t.Errorf("child got events after accepting: %q", got)
		}
	})
}
