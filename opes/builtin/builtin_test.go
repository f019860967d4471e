package builtin

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

func TestNew(t *testing.T) {
	tests := []struct {
		kind   string
		src    string
		needs  opes.Needs // of a valid service
		errMsg string     // expected error text, "" for success
		field  string     // FieldError.Field, when errMsg names an options error
	}{
		{kind: "acl", src: "[[options.entry]]\naction = \"deny\"\nrecipient = [\"trap@example.org\"]\n",
			needs: opes.Needs{Stages: opes.StagesOf(opes.StageRcpt)}},
		{kind: "tag", src: "[options]\nsubject_prefix = \"[EXTERNAL]\"\n",
			needs: opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true}},
		{kind: "acl", src: "[[options.entry]]\naction = \"maybe\"\n", errMsg: "unknown action", field: "entry[1].action"},
		{kind: "tag", src: "[options]\n", errMsg: "header or subject_prefix is required", field: "header"},
		{kind: "ACL", src: "", errMsg: `unknown service kind "ACL" (known kinds: acl, attachments, callout, checks, clamav, dkim, icap, links, milter, normalize, notify, pgp, reroute, rspamd, spamd, tag)`},
		{kind: "virus-scan", src: "", errMsg: `unknown service kind "virus-scan" (known kinds: acl, attachments, callout, checks, clamav, dkim, icap, links, milter, normalize, notify, pgp, reroute, rspamd, spamd, tag)`},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+tt.errMsg, func(t *testing.T) {
			svc, err := New(tt.kind, optiontest.Decoder(t, tt.src))
			if tt.errMsg == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if got := svc.Needs(); got != tt.needs {
					t.Errorf("Needs = %+v, want %+v: the wrong kind was built", got, tt.needs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errMsg) {
				t.Fatalf("err = %v, want %q", err, tt.errMsg)
			}
			var fe *opes.FieldError
			if isField := errors.As(err, &fe); isField != (tt.field != "") || (isField && fe.Field != tt.field) {
				t.Errorf("err = %#v, want FieldError %q", err, tt.field)
			}
		})
	}
}

func TestKinds(t *testing.T) {
	k := Kinds()
	if !slices.Equal(k, []string{"acl", "attachments", "callout", "checks", "clamav", "dkim", "icap", "links", "milter", "normalize", "notify", "pgp", "reroute", "rspamd", "spamd", "tag"}) {
		t.Fatalf("Kinds = %v", k)
	}
	if !slices.IsSorted(k) {
		t.Error("Kinds is not sorted")
	}
	k[0] = "changed"
	if Kinds()[0] != "acl" {
		t.Error("Kinds returns shared state")
	}
	// Every listed kind is constructible: a kind in the list that New does
	// not know would be an error users could not fix.
	for _, kind := range Kinds() {
		if _, err := New(kind, nil); err != nil && strings.Contains(err.Error(), "unknown service kind") {
			t.Errorf("Kinds lists %q but New does not know it", kind)
		}
	}
}
