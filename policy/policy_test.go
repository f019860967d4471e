package policy

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
	"github.com/opesmilter/opes-milter/opes/match"
)

var update = flag.Bool("update", false, "rewrite the .golden files of testdata/invalid")

func TestDefault(t *testing.T) {
	cfg := Default()
	if cfg.Source != DefaultSource {
		t.Errorf("Source = %q", cfg.Source)
	}
	p := cfg.Policy
	if p.System.URI != "https://localhost/opes/" || p.System.PrivacyURL != p.System.URI || p.System.TraceDetail != opes.TraceFull {
		t.Errorf("System = %+v", p.System)
	}
	if len(p.Services) != 0 || len(p.Rules) != 0 {
		t.Errorf("default has %d services and %d rules; want none", len(p.Services), len(p.Rules))
	}
	want := Milter{Listen: DefaultListen, WriteTimeout: 10 * time.Second, ShutdownTimeout: 30 * time.Second, SocketMode: 0o660}
	if cfg.Milter != want {
		t.Errorf("Milter = %+v; want %+v", cfg.Milter, want)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	// The embedded text goes through Parse like any file; it must also
	// say what the built-in defaults are, so the two cannot drift.
	empty, err := Parse("empty.toml", []byte("[system]\nuri = \"https://localhost/opes/\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	empty.Source = cfg.Source
	if empty.Milter != cfg.Milter || empty.Policy.Limits != cfg.Policy.Limits || empty.Policy.System != cfg.Policy.System {
		t.Errorf("default.toml differs from the built-in defaults:\n%+v %+v\n%+v %+v", cfg.Milter, cfg.Policy, empty.Milter, empty.Policy)
	}
	// Nothing refuses mail: a processor on the default policy continues
	// at every stage.
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := proc.NewSession()
	if o := s.Connect(t.Context()); o.Kind != opes.Continue {
		t.Errorf("connect: %v", o.Kind)
	}
	if o := s.Rcpt(t.Context(), opes.Address{Addr: "someone@example.org"}); o.Kind != opes.Continue {
		t.Errorf("rcpt: %v", o.Kind)
	}
}

func TestLoadFull(t *testing.T) {
	cfg, err := Load("testdata/valid/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source != "testdata/valid/full.toml" {
		t.Errorf("Source = %q", cfg.Source)
	}
	wantMilter := Milter{Listen: "unix:/run/opes-milter/milter.sock", ReadTimeout: 2 * time.Minute, WriteTimeout: 5 * time.Second, ShutdownTimeout: 90 * time.Second, SocketMode: 0o640, SocketGroup: "postfix"}
	if cfg.Milter != wantMilter {
		t.Errorf("Milter = %+v; want %+v", cfg.Milter, wantMilter)
	}
	if cfg.Admin.Listen != "127.0.0.1:10029" {
		t.Errorf("Admin = %+v", cfg.Admin)
	}
	if cfg.Report != (Report{Transactions: "/var/log/opes-milter/transactions.jsonl", Addresses: "domain", MeasureSize: true,
		Incidents: "/var/log/opes-milter/incidents.jsonl", Webhook: "https://siem.example.net/hooks/opes", WebhookTimeout: 3 * time.Second}) {
		t.Errorf("Report = %+v", cfg.Report)
	}
	p := cfg.Policy
	wantSystem := opes.System{URI: "https://mx1.example.net/opes/", PrivacyURL: "https://mx1.example.net/opes/privacy", Contact: "postmaster@example.net", TraceDetail: opes.TraceActions}
	if p.System != wantSystem {
		t.Errorf("System = %+v", p.System)
	}
	wantLimits := opes.Limits{MaxHeaderFields: 500, MaxHeaderBytes: 262144, MaxMessageSize: 52428800, Body: opes.BodyOptions{MaxMemory: 65536, TempDir: "/var/spool/opes-milter"}}
	if p.Limits != wantLimits {
		t.Errorf("Limits = %+v", p.Limits)
	}

	if len(p.Services) != 2 {
		t.Fatalf("%d services", len(p.Services))
	}
	access, tag := p.Services[0], p.Services[1]
	if access.Name != "access" || access.Kind != "acl" || access.URI != "https://mx1.example.net/opes/svc/access" ||
		access.Bypassable || access.RequiredForDelivery || access.OnError != opes.OnErrorTempFail || access.Impl == nil {
		t.Errorf("access = %+v", access)
	}
	if tag.Name != "external-tag" || tag.Kind != "tag" || tag.URI != "https://opes.example.net/services/tag" ||
		!tag.Bypassable || tag.OnError != opes.OnErrorContinue || tag.Impl == nil {
		t.Errorf("external-tag = %+v", tag)
	}
	// The acl entries act at connect (client) and rcpt.
	if st := access.Impl.Needs().Stages; st != opes.StagesOf(opes.StageConnect, opes.StageRcpt) {
		t.Errorf("access needs %v", st)
	}

	type rule struct {
		name    string
		stage   opes.Stage
		when    bool
		run     []string
		verdict *opes.Verdict
	}
	want := []rule{
		{"everyone", opes.StageConnect, false, []string{"access"}, nil},
		{"block-trap", opes.StageRcpt, true, nil, &opes.Verdict{Kind: opes.Reject, Reason: "spam trap",
			Reply: opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "Mailbox is a spam trap"}}},
		{"outsiders", opes.StageMail, true, []string{"external-tag"}, nil},
		{"slow-down", opes.StageHelo, true, nil, &opes.Verdict{Kind: opes.TempFail, Reply: opes.Reply{Code: 450, Enhanced: "4.7.0"}}},
		{"hold-macros", opes.StageHeaders, true, nil, &opes.Verdict{Kind: opes.Quarantine, Reason: "Office macro"}},
		{"rule-6", opes.StageConnect, true, nil, &opes.Verdict{Kind: opes.Accept}},
	}
	if len(p.Rules) != len(want) {
		t.Fatalf("%d rules; want %d", len(p.Rules), len(want))
	}
	for i, w := range want {
		r := p.Rules[i]
		var run []string
		for _, s := range r.Run {
			run = append(run, s.Name)
			if !slices.Contains(p.Services, s) {
				t.Errorf("rule %s runs a service that is not in Policy.Services", r.Name)
			}
		}
		if r.Name != w.name || r.Stage != w.stage || (r.When != nil) != w.when || !slices.Equal(run, w.run) {
			t.Errorf("rule %d = {%s %v when:%v run:%v}; want %+v", i+1, r.Name, r.Stage, r.When != nil, run, w)
		}
		if wantURI := "https://mx1.example.net/opes/rule/" + w.name; r.URI != wantURI {
			t.Errorf("rule %s URI = %q; want %q", r.Name, r.URI, wantURI)
		}
		if (r.Verdict == nil) != (w.verdict == nil) || r.Verdict != nil && *r.Verdict != *w.verdict {
			t.Errorf("rule %s verdict = %+v; want %+v", r.Name, r.Verdict, w.verdict)
		}
	}
	needs := p.Needs()
	if !needs.Stages.Has(opes.StageHeaders) || !needs.Headers {
		t.Errorf("policy needs %+v; the header rule needs the header", needs)
	}
}

func TestLoadMinimal(t *testing.T) {
	cfg, err := Load("testdata/valid/minimal.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	if p.System.URI != "https://mx.example.org/opes/" || p.System.PrivacyURL != p.System.URI {
		t.Errorf("System = %+v", p.System)
	}
	if cfg.Milter.Listen != DefaultListen || p.Limits.MaxHeaderFields != DefaultMaxHeaderFields || p.Limits.Body.MaxMemory != DefaultBodyMemory {
		t.Errorf("defaults not applied: %+v %+v", cfg.Milter, p.Limits)
	}
}

func TestLoadInline(t *testing.T) {
	cfg, err := Load("testdata/valid/inline.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	if p.System.TraceDetail != opes.TraceMinimal || cfg.Milter.Listen != "inet:127.0.0.1:10029" {
		t.Errorf("System = %+v, Milter = %+v", p.System, cfg.Milter)
	}
	if len(p.Services) != 1 || p.Services[0].URI != "https://mx.example.org/opes/svc/tagger" || p.Services[0].Impl == nil {
		t.Fatalf("Services = %+v", p.Services)
	}
	if len(p.Rules) != 2 {
		t.Fatalf("%d rules", len(p.Rules))
	}
	if r := p.Rules[0]; r.Name != "tag-all" || r.Stage != opes.StageConnect || r.When != nil || len(r.Run) != 1 || r.Run[0] != p.Services[0] || r.Verdict != nil {
		t.Errorf("rule 1 = %+v", r)
	}
	if r := p.Rules[1]; r.Name != "no-trap" || r.Stage != opes.StageRcpt || r.When == nil || r.Verdict == nil || r.Verdict.Kind != opes.Discard {
		t.Errorf("rule 2 = %+v", r)
	}
}

// TestInvalid loads each broken file of testdata/invalid and compares
// every reported line with the .golden file beside it. Run with -update
// to rewrite the golden files, then read the diff.
func TestInvalid(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			cfg, err := Load(file)
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("an invalid file produced a Config")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			b, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			wantLines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			gotLines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
			for i := 0; i < max(len(wantLines), len(gotLines)); i++ {
				var w, g string
				if i < len(wantLines) {
					w = wantLines[i]
				}
				if i < len(gotLines) {
					g = gotLines[i]
				}
				if w != g {
					t.Errorf("line %d:\n got %s\nwant %s", i+1, g, w)
				}
			}
			// Every line is file:line:col: message, and the Errors value
			// carries the same.
			lineRE := regexp.MustCompile(`^` + regexp.QuoteMeta(file) + `:[1-9][0-9]*:[1-9][0-9]*: \S`)
			for i, l := range gotLines {
				if !lineRE.MatchString(l) {
					t.Errorf("line %d is not file:line:col: message: %q", i+1, l)
				}
				if i < len(errs) && errs[i].Error() != l {
					t.Errorf("Errors[%d] = %q; Error() line is %q", i, errs[i].Error(), l)
				}
			}
		})
	}
}

// TestDocExamples keeps docs/configuration.md honest: every ```toml block
// in it is a complete file that loads.
func TestDocExamples(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```toml\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d toml blocks", len(blocks))
	}
	for i, m := range blocks {
		if _, err := Parse("configuration.md block "+strconv.Itoa(i+1), []byte(m[1])); err != nil {
			t.Errorf("%v", err)
		}
	}
	// Every key and kind is documented in both places.
	var keys []string
	for _, list := range [][]string{topKeys, systemKeys, milterKeys, limitsKeys, serviceKeys, ruleKeys,
		consentKeys, bypassKeys, storeKeys, quarantineKeys, ndrKeys, auditKeys} {
		keys = append(keys, list...)
	}
	keys = append(keys, structFieldNames(reflect.TypeFor[match.Spec]())...)
	for _, doc := range []struct{ name, text string }{{"docs/configuration.md", string(b)}, {"default.toml", string(defaultTOML)}} {
		for _, k := range keys {
			if !regexp.MustCompile(`\b` + k + `\b`).MatchString(doc.text) {
				t.Errorf("%s does not mention key %q", doc.name, k)
			}
		}
		for _, k := range builtin.Kinds() {
			if !strings.Contains(doc.text, `"`+k+`"`) && !strings.Contains(doc.text, "`"+k+"`") {
				t.Errorf("%s does not mention kind %q", doc.name, k)
			}
		}
	}
}

func structFieldNames(t reflect.Type) []string {
	var out []string
	for name := range structFields(t) {
		out = append(out, name)
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load("testdata/does-not-exist.toml"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("# padding\n", maxFileSize/10+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(big)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Line != 1 || !strings.Contains(errs[0].Msg, "larger than") {
		t.Errorf("big file: %v", err)
	}
	if _, err := Parse("big", make([]byte, maxFileSize+1)); err == nil {
		t.Error("Parse accepted a file over the size bound")
	}
}

// TestShapeBounds: files whose shape would make the TOML parser slow are
// refused at once, at the place where the bound is exceeded.
func TestShapeBounds(t *testing.T) {
	tests := []struct{ src, want string }{
		{"a = " + strings.Repeat("[", 20000) + strings.Repeat("]", 20000), "t:1:37: arrays or inline tables nested deeper than 32 levels"},
		{"a = " + strings.Repeat("{b=", 20000) + "1" + strings.Repeat("}", 20000), "t:1:101: arrays or inline tables nested deeper than 32 levels"},
		{"[" + strings.Repeat("a.", 20000) + "b]", "t:1:67: key with more than 32 dotted parts"},
		{"\n" + strings.Repeat("a.", 20000) + "b = 1", "t:2:66: key with more than 32 dotted parts"},
	}
	for _, tt := range tests {
		start := time.Now()
		_, err := Parse("t", []byte(tt.src))
		if err == nil || err.Error() != tt.want {
			t.Errorf("got %v; want %s", err, tt.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %v", d)
		}
	}
	// 32 levels are fine.
	ok := "[system]\nuri = \"https://x.example/opes/\"\n[limits]\n" + strings.Repeat("a.", 31) + "b = " + strings.Repeat("[", 31) + strings.Repeat("]", 31)
	_, err := Parse("t", []byte(ok))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || !strings.Contains(errs[0].Msg, `unknown key "a"`) {
		t.Errorf("at the bounds: %v", err)
	}
}
