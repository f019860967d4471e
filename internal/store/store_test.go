package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// database opens Store values on one empty database of one backend.
// open may be called again after Close (reopen); when shared is true it
// may also be called while another Store is open (the postgres backend;
// the embedded file admits one process at a time).
type database struct {
	open   func(t testing.TB, maxQuarantineBytes int64) *Store
	shared bool
	dsn    string // postgres only
}

// runSuite is the one behavioural suite both backends must pass; newDB
// gives each subtest its own empty database.
func runSuite(t *testing.T, newDB func(t *testing.T) database) {
	tests := []struct {
		name string
		fn   func(t *testing.T, db database)
	}{
		{"Preferences", testPreferences},
		{"PreferenceValidation", testPreferenceValidation},
		{"MatchPreferences", testMatchPreferences},
		{"Quarantine", testQuarantine},
		{"QuarantineFilters", testQuarantineFilters},
		{"QuarantineExpiry", testQuarantineExpiry},
		{"QuarantineFull", testQuarantineFull},
		{"QuarantineLargeBound", testQuarantineLargeBound},
		{"QuarantineReadError", testQuarantineReadError},
		{"QuarantineValidation", testQuarantineValidation},
		{"Outbox", testOutbox},
		{"OutboxValidation", testOutboxValidation},
		{"ConcurrentClaim", testConcurrentClaim},
		{"Reopen", testReopen},
		{"CancelledContext", testCancelledContext},
		{"Counts", testCounts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newDB(t)) })
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAddPref(t testing.TB, s *Store, p Preference) Preference {
	t.Helper()
	got, err := s.AddPreference(ctxT(t), p)
	if err != nil {
		t.Fatalf("AddPreference(%+v): %v", p, err)
	}
	return got
}

func ids[T any](items []T, id func(T) string) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, id(it))
	}
	return out
}

func prefIDs(ps []Preference) []string { return ids(ps, func(p Preference) string { return p.ID }) }
func qIDs(qs []QuarantineItem) []string {
	return ids(qs, func(q QuarantineItem) string { return q.ID })
}
func outIDs(os []OutboxItem) []string { return ids(os, func(o OutboxItem) string { return o.ID }) }
func sameIDs(a, b []string) bool      { return reflect.DeepEqual(a, b) }
func wantErrf(t testing.TB, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got error %v, want %v", what, err, want)
	}
}

func testPreferences(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	expires := time.Now().Add(48 * time.Hour)
	p1 := mustAddPref(t, s, Preference{Recipient: " <Joe@Example.ORG> ", Sender: "News@Lists.Example.NET",
		Services: []string{"https://opes.example.org/svc/spam", "https://opes.example.org/svc/tag"},
		Kind:     NonOPESVersion, CreatedBy: "cli:root", Note: "asked by phone\r\nticket 42", Expires: expires})
	if p1.ID == "" || p1.Created.IsZero() || p1.Recipient != "joe@example.org" || p1.Sender != "news@lists.example.net" {
		t.Errorf("AddPreference returned %+v", p1)
	}
	if !p1.Expires.Equal(expires.Truncate(time.Microsecond)) || p1.Expires.Location() != time.UTC {
		t.Errorf("Expires = %v, want %v in UTC", p1.Expires, expires)
	}
	if d := time.Since(p1.Created); d < 0 || d > time.Minute {
		t.Errorf("Created = %v", p1.Created)
	}
	p2 := mustAddPref(t, s, Preference{Recipient: "@example.org", Kind: NoOptional})
	p3 := mustAddPref(t, s, Preference{Recipient: "ann@example.net", Kind: NoOptional, Sender: "@spam.example"})

	all, err := s.ListPreferences(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(all, []Preference{p1, p2, p3}) {
		t.Errorf("ListPreferences(\"\") =\n%+v\nwant\n%+v", all, []Preference{p1, p2, p3})
	}
	joe, err := s.ListPreferences(ctx, "JOE@example.org")
	if err != nil || !reflect.DeepEqual(joe, []Preference{p1}) {
		t.Errorf("ListPreferences(joe) = %+v, %v", joe, err)
	}
	dom, err := s.ListPreferences(ctx, "@example.org")
	if err != nil || !sameIDs(prefIDs(dom), []string{p2.ID}) {
		t.Errorf("ListPreferences(@example.org) = %v, %v", prefIDs(dom), err)
	}
	none, err := s.ListPreferences(ctx, "nobody@example.com")
	if err != nil || len(none) != 0 {
		t.Errorf("ListPreferences(nobody) = %+v, %v", none, err)
	}
	if _, err := s.ListPreferences(ctx, "not an address"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ListPreferences(bad filter): %v", err)
	}

	if err := s.RemovePreference(ctx, p1.ID); err != nil {
		t.Fatal(err)
	}
	wantErrf(t, s.RemovePreference(ctx, p1.ID), ErrNotFound, "second remove")
	wantErrf(t, s.RemovePreference(ctx, "x'; DROP TABLE x"), ErrInvalid, "remove bad id")
	all, err = s.ListPreferences(ctx, "")
	if err != nil || !sameIDs(prefIDs(all), []string{p2.ID, p3.ID}) {
		t.Errorf("after remove: %v, %v", prefIDs(all), err)
	}
	joe, err = s.ListPreferences(ctx, "joe@example.org")
	if err != nil || len(joe) != 0 {
		t.Errorf("removed entry still listed for its recipient: %+v, %v", joe, err)
	}
}

func testPreferenceValidation(t *testing.T, db database) {
	s := db.open(t, 0)
	ok := Preference{Recipient: "joe@example.org", Kind: NoOptional}
	for _, tc := range []struct {
		name   string
		modify func(p *Preference)
	}{
		{"empty recipient", func(p *Preference) { p.Recipient = "" }},
		{"recipient without domain", func(p *Preference) { p.Recipient = "joe" }},
		{"recipient with empty domain", func(p *Preference) { p.Recipient = "joe@" }},
		{"bare @", func(p *Preference) { p.Recipient = "@" }},
		{"recipient with space", func(p *Preference) { p.Recipient = "jo e@example.org" }},
		{"recipient with CRLF", func(p *Preference) { p.Recipient = "joe@example.org\r\nX: y" }},
		{"recipient domain dots", func(p *Preference) { p.Recipient = "joe@example..org" }},
		{"double @domain", func(p *Preference) { p.Recipient = "@a@example.org" }},
		{"too long", func(p *Preference) { p.Recipient = strings.Repeat("a", 400) + "@example.org" }},
		{"bad sender", func(p *Preference) { p.Sender = "spammer" }},
		{"unknown kind", func(p *Preference) { p.Kind = "everything" }},
		{"empty kind", func(p *Preference) { p.Kind = "" }},
		{"service with space", func(p *Preference) { p.Services = []string{"urn:a b"} }},
		{"empty service", func(p *Preference) { p.Services = []string{""} }},
		{"NUL in note", func(p *Preference) { p.Note = "a\x00b" }},
		{"invalid UTF-8 in created-by", func(p *Preference) { p.CreatedBy = "\xff\xfe" }},
		{"huge note", func(p *Preference) { p.Note = strings.Repeat("n", maxText+1) }},
	} {
		p := ok
		tc.modify(&p)
		_, err := s.AddPreference(ctxT(t), p)
		wantErrf(t, err, ErrInvalid, tc.name)
	}
	all, err := s.ListPreferences(ctxT(t), "")
	if err != nil || len(all) != 0 {
		t.Errorf("invalid entries were stored: %+v, %v", all, err)
	}
	// The zero-value-friendly cases are accepted.
	mustAddPref(t, s, Preference{Recipient: "@Sub.Example.org", Sender: "@Example.NET", Kind: NonOPESVersion})
}

func testMatchPreferences(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	joeAny := mustAddPref(t, s, Preference{Recipient: "joe@example.org", Kind: NoOptional})
	domSpam := mustAddPref(t, s, Preference{Recipient: "@example.org", Sender: "spam@bad.example", Kind: NonOPESVersion})
	joeFriends := mustAddPref(t, s, Preference{Recipient: "joe@example.org", Sender: "@friends.example", Kind: NonOPESVersion})
	mustAddPref(t, s, Preference{Recipient: "joe@example.org", Kind: NonOPESVersion, Expires: now.Add(-time.Second)})
	atNow := mustAddPref(t, s, Preference{Recipient: "joe@example.org", Sender: "late@x.example", Kind: NonOPESVersion, Expires: now})
	joeFuture := mustAddPref(t, s, Preference{Recipient: "joe@example.org", Sender: "bob@friends.example", Kind: NoOptional, Expires: now.Add(time.Hour)})
	ann := mustAddPref(t, s, Preference{Recipient: "ann@example.org", Kind: NoOptional})
	mustAddPref(t, s, Preference{Recipient: "joe@example.org.evil", Kind: NoOptional})
	mustAddPref(t, s, Preference{Recipient: "@sub.example.org", Kind: NoOptional})

	for _, tc := range []struct {
		rcpt, sender string
		at           time.Time
		want         []Preference
	}{
		{"joe@example.org", "someone@else.example", now, []Preference{joeAny}},
		{"JOE@Example.Org", "SOMEONE@else.example", now, []Preference{joeAny}},
		{"<joe@example.org>", "<>", now, []Preference{joeAny}},
		{"joe@example.org", "", now, []Preference{joeAny}},
		{"joe@example.org", "spam@bad.example", now, []Preference{joeAny, domSpam}},
		{"joe@example.org", "Spam@Bad.Example", now, []Preference{joeAny, domSpam}},
		{"joe@example.org", "other@bad.example", now, []Preference{joeAny}},
		{"joe@example.org", "alice@friends.example", now, []Preference{joeAny, joeFriends}},
		{"joe@example.org", "bob@friends.example", now, []Preference{joeAny, joeFriends, joeFuture}},
		{"joe@example.org", "bob@friends.example", now.Add(time.Hour), []Preference{joeAny, joeFriends}},
		{"joe@example.org", "late@x.example", now.Add(-time.Microsecond), []Preference{joeAny, atNow}},
		{"joe@example.org", "late@x.example", now, []Preference{joeAny}},
		{"ann@example.org", "spam@bad.example", now, []Preference{domSpam, ann}},
		{"carl@example.org", "spam@bad.example", now, []Preference{domSpam}},
		{"carl@example.org", "friend@friends.example", now, nil},
		{"joe@sub.example.org", "x@y.example", now, nil},
		{"postmaster", "x@y.example", now, nil},
		{"@example.org", "spam@bad.example", now, nil},
	} {
		got, err := s.MatchPreferences(ctx, tc.rcpt, tc.sender, tc.at)
		if err != nil {
			t.Errorf("MatchPreferences(%q, %q): %v", tc.rcpt, tc.sender, err)
			continue
		}
		if tc.rcpt == "joe@sub.example.org" {
			// The subdomain entry applies to the subdomain only.
			if len(got) != 1 || got[0].Recipient != "@sub.example.org" {
				t.Errorf("MatchPreferences(joe@sub.example.org) = %+v", got)
			}
			continue
		}
		if !sameIDs(prefIDs(got), prefIDs(tc.want)) {
			t.Errorf("MatchPreferences(%q, %q, %v) = %v, want %v", tc.rcpt, tc.sender, tc.at, prefIDs(got), prefIDs(tc.want))
		}
	}
	got, err := s.MatchPreferences(ctx, "joe@example.org", "x@y.example", now)
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], joeAny) {
		t.Errorf("matched entry differs from the added one: %+v, %v", got, err)
	}
	if _, err := s.MatchPreferences(ctx, "", "x@y.example", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty recipient: %v", err)
	}
}

func heldItem(rcpts ...string) QuarantineItem {
	return QuarantineItem{
		TraceID: "t-1", QueueID: "4Q1abc", Sender: "Alice@Example.NET", Recipients: rcpts,
		Reason: "virus Eicar-Test-Signature found\r\nX-Injected: yes", Service: "https://opes.example.org/svc/clamav",
		Expires: time.Now().Add(72 * time.Hour),
	}
}

func mustPut(t testing.TB, s *Store, it QuarantineItem, msg string) QuarantineItem {
	t.Helper()
	got, err := s.PutQuarantine(ctxT(t), it, strings.NewReader(msg))
	if err != nil {
		t.Fatalf("PutQuarantine: %v", err)
	}
	return got
}

func readQ(t testing.TB, s *Store, id string) (string, error) {
	t.Helper()
	rc, err := s.OpenQuarantine(ctxT(t), id)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

func testQuarantine(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	msg := "Received: from x\r\nSubject: test\r\n\r\nbody\x00with NUL and \xff bytes\r\n"
	in := heldItem("Bob@Example.ORG", "carl@example.org")
	in.RecipientArgs = []map[string]string{{"ORCPT": "rfc822;Bob@Example.ORG", "NOTIFY": "FAILURE"}, nil}
	in.EnvID = "env-1"
	in.Bypassable = true
	put := mustPut(t, s, in, msg)
	if put.ID == "" || put.Status != Held || put.Size != int64(len(msg)) || put.Created.IsZero() {
		t.Errorf("PutQuarantine returned %+v", put)
	}
	if put.Sender != "Alice@Example.NET" || put.Recipients[0] != "Bob@Example.ORG" {
		t.Errorf("envelope must be kept as given: %+v", put)
	}
	got, err := s.GetQuarantine(ctx, put.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, put) {
		t.Errorf("GetQuarantine =\n%+v\nwant\n%+v", got, put)
	}
	body, err := readQ(t, s, put.ID)
	if err != nil || body != msg {
		t.Errorf("OpenQuarantine = %q, %v", body, err)
	}
	_, err = s.GetQuarantine(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
	wantErrf(t, err, ErrNotFound, "get unknown")
	_, err = s.OpenQuarantine(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
	wantErrf(t, err, ErrNotFound, "open unknown")
	_, err = s.GetQuarantine(ctx, "../etc/passwd")
	wantErrf(t, err, ErrInvalid, "get bad id")

	// Release: status recorded, bytes freed, no second transition.
	before := time.Now().Add(-time.Second)
	if err := s.SetQuarantineStatus(ctx, put.ID, Released, "admin:ann"); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetQuarantine(ctx, put.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != Released || got.StatusBy != "admin:ann" || got.StatusAt.Before(before) || got.Size != put.Size {
		t.Errorf("after release: %+v", got)
	}
	_, err = readQ(t, s, put.ID)
	wantErrf(t, err, ErrNotFound, "open released")
	wantErrf(t, s.SetQuarantineStatus(ctx, put.ID, Deleted, "admin:bob"), ErrInvalid, "delete released")
	wantErrf(t, s.SetQuarantineStatus(ctx, put.ID, Released, "admin:bob"), ErrInvalid, "release twice")
	wantErrf(t, s.SetQuarantineStatus(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV", Released, "x"), ErrNotFound, "release unknown")

	other := mustPut(t, s, heldItem("dan@example.org"), "m2")
	wantErrf(t, s.SetQuarantineStatus(ctx, other.ID, Held, "x"), ErrInvalid, "set held")
	wantErrf(t, s.SetQuarantineStatus(ctx, other.ID, "gone", "x"), ErrInvalid, "unknown status")
	if err := s.SetQuarantineStatus(ctx, other.ID, Deleted, "admin:ann"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetQuarantine(ctx, other.ID); got.Status != Deleted {
		t.Errorf("after delete: %+v", got)
	}
	_, err = readQ(t, s, other.ID)
	wantErrf(t, err, ErrNotFound, "open deleted")
}

func testQuarantineFilters(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	a := mustPut(t, s, heldItem("bob@example.org"), "a")
	b := mustPut(t, s, heldItem("Carl@Example.org", "dan@other.example"), "b")
	c := mustPut(t, s, heldItem("eve@other.example"), "c")
	if err := s.SetQuarantineStatus(ctx, b.ID, Released, "x"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    QuarantineFilter
		want []string
	}{
		{QuarantineFilter{}, []string{a.ID, b.ID, c.ID}},
		{QuarantineFilter{Limit: 2}, []string{a.ID, b.ID}},
		{QuarantineFilter{Status: Held}, []string{a.ID, c.ID}},
		{QuarantineFilter{Status: Released}, []string{b.ID}},
		{QuarantineFilter{Status: Expired}, []string{}},
		{QuarantineFilter{Recipient: "carl@example.org"}, []string{b.ID}},
		{QuarantineFilter{Recipient: "CARL@example.ORG"}, []string{b.ID}},
		{QuarantineFilter{Recipient: "dan@other.example"}, []string{b.ID}},
		{QuarantineFilter{Recipient: "@other.example"}, []string{b.ID, c.ID}},
		{QuarantineFilter{Recipient: "@other.example", Status: Held}, []string{c.ID}},
		{QuarantineFilter{Recipient: "@example.org", Limit: 1}, []string{a.ID}},
		{QuarantineFilter{Recipient: "nobody@example.org"}, []string{}},
	} {
		got, err := s.ListQuarantine(ctx, tc.f)
		if err != nil {
			t.Errorf("ListQuarantine(%+v): %v", tc.f, err)
			continue
		}
		if !sameIDs(qIDs(got), tc.want) {
			t.Errorf("ListQuarantine(%+v) = %v, want %v", tc.f, qIDs(got), tc.want)
		}
	}
	for _, f := range []QuarantineFilter{{Status: "gone"}, {Limit: -1}, {Recipient: "bob"}} {
		_, err := s.ListQuarantine(ctx, f)
		wantErrf(t, err, ErrInvalid, fmt.Sprintf("ListQuarantine(%+v)", f))
	}
}

func testQuarantineExpiry(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	now := time.Now()
	mk := func(exp time.Time) QuarantineItem {
		it := heldItem("bob@example.org")
		it.Created = now.Add(-10 * time.Hour)
		it.Expires = exp
		return mustPut(t, s, it, "m")
	}
	late := mk(now.Add(-time.Minute))
	early := mk(now.Add(-time.Hour))
	exact := mk(now)
	mk(now.Add(time.Hour))
	mk(time.Time{}) // never expires
	released := mk(now.Add(-2 * time.Hour))
	if err := s.SetQuarantineStatus(ctx, released.ID, Released, "x"); err != nil {
		t.Fatal(err)
	}
	got, err := s.ExpiredQuarantine(ctx, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{early.ID, late.ID, exact.ID}; !sameIDs(qIDs(got), want) {
		t.Errorf("ExpiredQuarantine = %v, want %v (earliest expiry first)", qIDs(got), want)
	}
	if got, err := s.ExpiredQuarantine(ctx, now, 2); err != nil || !sameIDs(qIDs(got), []string{early.ID, late.ID}) {
		t.Errorf("ExpiredQuarantine limit 2 = %v, %v", qIDs(got), err)
	}
	// The expirer reads the message, sends its NDR, then marks it.
	if body, err := readQ(t, s, early.ID); err != nil || body != "m" {
		t.Errorf("read expiring message: %q, %v", body, err)
	}
	if err := s.SetQuarantineStatus(ctx, early.ID, Expired, "expirer"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ExpiredQuarantine(ctx, now, 0); err != nil || !sameIDs(qIDs(got), []string{late.ID, exact.ID}) {
		t.Errorf("after expiring one: %v, %v", qIDs(got), err)
	}
	if got, err := s.ExpiredQuarantine(ctx, now.Add(-3*time.Hour), 0); err != nil || len(got) != 0 {
		t.Errorf("nothing expired 3h ago: %v, %v", qIDs(got), err)
	}
	if _, err := s.ExpiredQuarantine(ctx, now, -1); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative limit: %v", err)
	}
}

// endless is a message that never ends: PutQuarantine must stop reading
// once the message cannot fit.
type endless struct{ read int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.read += int64(len(p))
	return len(p), nil
}

func testQuarantineFull(t *testing.T, db database) {
	const max = 1000
	s := db.open(t, max)
	ctx := ctxT(t)
	first := mustPut(t, s, heldItem("a@example.org"), strings.Repeat("1", 600))
	_, err := s.PutQuarantine(ctx, heldItem("a@example.org"), strings.NewReader(strings.Repeat("2", 500)))
	wantErrf(t, err, ErrFull, "600+500 > 1000")
	mustPut(t, s, heldItem("a@example.org"), strings.Repeat("3", 400)) // exactly full
	_, err = s.PutQuarantine(ctx, heldItem("a@example.org"), strings.NewReader("4"))
	wantErrf(t, err, ErrFull, "one byte over")

	// Leaving the quarantine frees the bytes.
	if err := s.SetQuarantineStatus(ctx, first.ID, Deleted, "admin"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, heldItem("a@example.org"), strings.Repeat("5", 600))

	// A message bigger than the whole quarantine is refused without
	// being read to its end.
	e := &endless{}
	_, err = s.PutQuarantine(ctx, heldItem("a@example.org"), e)
	wantErrf(t, err, ErrFull, "endless message")
	if e.read > 64*1024 {
		t.Errorf("read %d bytes of a message that cannot fit in %d", e.read, max)
	}
	held, err := s.ListQuarantine(ctx, QuarantineFilter{Status: Held})
	if err != nil || len(held) != 2 {
		t.Errorf("held after refusals: %v, %v", qIDs(held), err)
	}
}

// testQuarantineLargeBound: bounds beyond 32 bits work (10 GiB).
func testQuarantineLargeBound(t *testing.T, db database) {
	s := db.open(t, 10<<30)
	it := mustPut(t, s, heldItem("a@example.org"), "m")
	if body, err := readQ(t, s, it.ID); err != nil || body != "m" {
		t.Errorf("read back %q, %v", body, err)
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n > 0 {
		f.n--
		return copy(p, "partial"), nil
	}
	return 0, errors.New("connection reset")
}

func testQuarantineReadError(t *testing.T, db database) {
	s := db.open(t, 0)
	_, err := s.PutQuarantine(ctxT(t), heldItem("a@example.org"), &failingReader{n: 2})
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("PutQuarantine with a failing reader: %v", err)
	}
	items, err := s.ListQuarantine(ctxT(t), QuarantineFilter{})
	if err != nil || len(items) != 0 {
		t.Errorf("a half-read message was stored: %v, %v", qIDs(items), err)
	}
}

func testQuarantineValidation(t *testing.T, db database) {
	s := db.open(t, 0)
	for _, tc := range []struct {
		name   string
		modify func(*QuarantineItem)
	}{
		{"no recipients", func(it *QuarantineItem) { it.Recipients = nil }},
		{"empty recipient", func(it *QuarantineItem) { it.Recipients = []string{""} }},
		{"recipient with CRLF", func(it *QuarantineItem) { it.Recipients = []string{"a@b.example\r\nRCPT TO:<x@y>"} }},
		{"sender with space", func(it *QuarantineItem) { it.Sender = "a b@example.org" }},
		{"args count", func(it *QuarantineItem) { it.RecipientArgs = []map[string]string{{}, {}} }},
		{"NUL in reason", func(it *QuarantineItem) { it.Reason = "a\x00" }},
		{"invalid UTF-8 in queue id", func(it *QuarantineItem) { it.QueueID = "\xc3" }},
		{"expires before created", func(it *QuarantineItem) {
			it.Created = time.Now()
			it.Expires = it.Created.Add(-time.Hour)
		}},
	} {
		it := heldItem("a@example.org")
		tc.modify(&it)
		_, err := s.PutQuarantine(ctxT(t), it, strings.NewReader("m"))
		wantErrf(t, err, ErrInvalid, tc.name)
	}
	// The null sender and an empty parameter list are fine.
	it := heldItem("a@example.org")
	it.Sender = ""
	it.RecipientArgs = []map[string]string{}
	got := mustPut(t, s, it, "m")
	if got.RecipientArgs != nil {
		t.Errorf("empty RecipientArgs stored as %#v", got.RecipientArgs)
	}
}

func ndr(rcpt string) OutboxItem {
	return OutboxItem{TraceID: "t-9", Recipients: []string{rcpt},
		Data: []byte("From: MAILER-DAEMON\r\nSubject: Undelivered\r\n\r\nsorry\x00\xff\r\n")}
}

func mustEnqueue(t testing.TB, s *Store, it OutboxItem) string {
	t.Helper()
	id, err := s.Enqueue(ctxT(t), it)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return id
}

func testOutbox(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	now := time.Now()
	a := mustEnqueue(t, s, ndr("alice@example.net"))
	withSender := ndr("bob@example.net")
	withSender.Sender = "postmaster@example.org"
	withSender.NextAttempt = now.Add(-time.Minute)
	b := mustEnqueue(t, s, withSender)
	future := ndr("carl@example.net")
	future.NextAttempt = now.Add(time.Hour)
	c := mustEnqueue(t, s, future)

	const lease = 5 * time.Minute
	claimed, err := s.Claim(ctx, now.Add(time.Second), lease, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !sameIDs(outIDs(claimed), []string{a, b}) {
		t.Fatalf("Claim = %v, want %v", outIDs(claimed), []string{a, b})
	}
	for _, it := range claimed {
		if !bytes.Equal(it.Data, ndr("").Data) || it.Status != Queued || it.Attempts != 0 || it.Created.IsZero() {
			t.Errorf("claimed item %+v", it)
		}
		if want := now.Add(time.Second + lease).Truncate(time.Microsecond); !it.NextAttempt.Equal(want) {
			t.Errorf("claimed NextAttempt = %v, want %v", it.NextAttempt, want)
		}
	}
	if claimed[1].Sender != "postmaster@example.org" || claimed[0].Sender != "" || claimed[0].Recipients[0] != "alice@example.net" {
		t.Errorf("envelope: %+v / %+v", claimed[0], claimed[1])
	}
	// Leased: nobody else gets them until the lease runs out.
	if again, err := s.Claim(ctx, now.Add(2*time.Second), lease, 10); err != nil || len(again) != 0 {
		t.Errorf("claimed during the lease: %v, %v", outIDs(again), err)
	}
	if again, err := s.Claim(ctx, now.Add(time.Second+lease), lease, 1); err != nil || !sameIDs(outIDs(again), []string{a}) {
		t.Errorf("after the lease, limit 1: %v, %v", outIDs(again), err)
	}

	next := now.Add(30 * time.Minute)
	if err := s.Retry(ctx, b, next, "451 4.3.0 try later\r\nsecond line\x00"); err != nil {
		t.Fatal(err)
	}
	if err := s.Fail(ctx, c, "550 5.1.1 no such user"); err != nil {
		t.Fatal(err)
	}
	queued, err := s.ListOutbox(ctx, Queued, 0)
	if err != nil || !sameIDs(outIDs(queued), []string{a, b}) {
		t.Fatalf("ListOutbox(queued) = %v, %v", outIDs(queued), err)
	}
	rb := queued[1]
	if rb.Attempts != 1 || !rb.NextAttempt.Equal(next.Truncate(time.Microsecond)) ||
		!strings.HasPrefix(rb.LastError, "451 4.3.0 try later\r\nsecond line") || strings.Contains(rb.LastError, "\x00") {
		t.Errorf("after Retry: %+v", rb)
	}
	failed, err := s.ListOutbox(ctx, Failed, 0)
	if err != nil || !sameIDs(outIDs(failed), []string{c}) || failed[0].LastError != "550 5.1.1 no such user" || failed[0].Status != Failed {
		t.Errorf("ListOutbox(failed) = %+v, %v", failed, err)
	}
	if all, err := s.ListOutbox(ctx, "", 2); err != nil || !sameIDs(outIDs(all), []string{a, b}) {
		t.Errorf("ListOutbox(all, 2) = %v, %v", outIDs(all), err)
	}
	// A failed item is never claimed; the retried one comes back on time.
	later, err := s.Claim(ctx, now.Add(2*time.Hour), lease, 10)
	if err != nil || !sameIDs(outIDs(later), []string{a, b}) {
		t.Errorf("Claim later = %v, %v", outIDs(later), err)
	}
	if err := s.Done(ctx, a); err != nil {
		t.Fatal(err)
	}
	wantErrf(t, s.Done(ctx, a), ErrNotFound, "done twice")
	wantErrf(t, s.Retry(ctx, a, next, "x"), ErrNotFound, "retry done")
	wantErrf(t, s.Fail(ctx, a, "x"), ErrNotFound, "fail done")
	// An admin can put a failed item back in the queue.
	if err := s.Retry(ctx, c, now, "requeued by admin"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, now.Add(time.Second), lease, 10); err != nil || !sameIDs(outIDs(got), []string{c}) || got[0].Attempts != 1 {
		t.Errorf("requeued failed item: %+v, %v", got, err)
	}
	if err := s.Done(ctx, c); err != nil {
		t.Fatal(err)
	}
	if all, err := s.ListOutbox(ctx, "", 0); err != nil || !sameIDs(outIDs(all), []string{b}) {
		t.Errorf("remaining: %v, %v", outIDs(all), err)
	}
}

func testOutboxValidation(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	for _, tc := range []struct {
		name   string
		modify func(*OutboxItem)
	}{
		{"no recipients", func(it *OutboxItem) { it.Recipients = nil }},
		{"bad recipient", func(it *OutboxItem) { it.Recipients = []string{"a\r\nb@c"} }},
		{"bad sender", func(it *OutboxItem) { it.Sender = "<x@y>" }},
		{"no data", func(it *OutboxItem) { it.Data = nil }},
		{"negative attempts", func(it *OutboxItem) { it.Attempts = -1 }},
	} {
		it := ndr("a@example.org")
		tc.modify(&it)
		_, err := s.Enqueue(ctx, it)
		wantErrf(t, err, ErrInvalid, tc.name)
	}
	_, err := s.Claim(ctx, time.Now(), 0, 1)
	wantErrf(t, err, ErrInvalid, "zero lease")
	_, err = s.Claim(ctx, time.Now(), time.Minute, 0)
	wantErrf(t, err, ErrInvalid, "zero limit")
	_, err = s.ListOutbox(ctx, "sent", 0)
	wantErrf(t, err, ErrInvalid, "unknown status")
	wantErrf(t, s.Retry(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV", time.Time{}, ""), ErrInvalid, "retry without time")
	if all, err := s.ListOutbox(ctx, "", 0); err != nil || len(all) != 0 {
		t.Errorf("invalid items were stored: %v, %v", outIDs(all), err)
	}
}

// testConcurrentClaim drains one queue from two Store values (one when
// the backend admits a single process) with two goroutines each; no item
// may be handed out twice and none lost.
func testConcurrentClaim(t *testing.T, db database) {
	s1 := db.open(t, 0)
	s2 := s1
	if db.shared {
		s2 = db.open(t, 0)
	}
	const n = 120
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		want[mustEnqueue(t, s1, ndr(fmt.Sprintf("r%d@example.org", i)))] = true
	}
	now := time.Now()
	var (
		mu    sync.Mutex
		got   = map[string]int{}
		wg    sync.WaitGroup
		errCh = make(chan error, 4)
	)
	for w := 0; w < 4; w++ {
		s := s1
		if w%2 == 1 {
			s = s2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < n; round++ { // bounded: each round takes >= 1 item or stops
				items, err := s.Claim(context.Background(), now, time.Hour, 7)
				if err != nil {
					errCh <- err
					return
				}
				if len(items) == 0 {
					return
				}
				mu.Lock()
				for _, it := range items {
					got[it.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errCh)
	for err := range errCh {
		t.Error(err)
	}
	for id, c := range got {
		if c != 1 {
			t.Errorf("item %s claimed %d times", id, c)
		}
		if !want[id] {
			t.Errorf("claimed unknown item %s", id)
		}
	}
	if len(got) != n {
		t.Errorf("claimed %d distinct items, want %d", len(got), n)
	}
}

func testReopen(t *testing.T, db database) {
	s := db.open(t, 100)
	p := mustAddPref(t, s, Preference{Recipient: "joe@example.org", Kind: NoOptional, Services: []string{"urn:x"}})
	q := mustPut(t, s, heldItem("joe@example.org"), strings.Repeat("q", 90))
	o := mustEnqueue(t, s, ndr("joe@example.org"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = db.open(t, 100)
	ctx := ctxT(t)
	if ps, err := s.ListPreferences(ctx, ""); err != nil || len(ps) != 1 || !reflect.DeepEqual(ps[0], p) {
		t.Errorf("preferences after reopen: %+v, %v", ps, err)
	}
	if got, err := s.GetQuarantine(ctx, q.ID); err != nil || !reflect.DeepEqual(got, q) {
		t.Errorf("quarantine after reopen: %+v, %v", got, err)
	}
	if body, err := readQ(t, s, q.ID); err != nil || body != strings.Repeat("q", 90) {
		t.Errorf("message after reopen: %q, %v", body, err)
	}
	// The quarantine's byte count survives too.
	_, err := s.PutQuarantine(ctx, heldItem("joe@example.org"), strings.NewReader(strings.Repeat("r", 20)))
	wantErrf(t, err, ErrFull, "count after reopen")
	if items, err := s.ListOutbox(ctx, Queued, 0); err != nil || !sameIDs(outIDs(items), []string{o}) {
		t.Errorf("outbox after reopen: %v, %v", outIDs(items), err)
	}
}

func testCancelledContext(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.AddPreference(ctx, Preference{Recipient: "a@example.org", Kind: NoOptional}); !errors.Is(err, context.Canceled) {
		t.Errorf("AddPreference with a cancelled context: %v", err)
	}
	if _, err := s.MatchPreferences(ctx, "a@example.org", "", time.Now()); !errors.Is(err, context.Canceled) {
		t.Errorf("MatchPreferences with a cancelled context: %v", err)
	}
	if _, err := s.Claim(ctx, time.Now(), time.Minute, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Claim with a cancelled context: %v", err)
	}
}

func testCounts(t *testing.T, db database) {
	s := db.open(t, 0)
	ctx := ctxT(t)
	c, err := s.Counts(ctx)
	if err != nil || c != (Counts{}) {
		t.Fatalf("empty store: %+v %v", c, err)
	}
	now := time.Now().UTC()
	var held []QuarantineItem
	for i := range 3 {
		it, err := s.PutQuarantine(ctx, QuarantineItem{TraceID: fmt.Sprint("T", i), Sender: "a@example.org", Recipients: []string{"b@example.net"},
			Reason: "r", Service: "https://x.example/svc/a", Created: now, Expires: now.Add(time.Hour)}, strings.NewReader("Subject: x\r\n\r\n12345\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, it)
	}
	if err := s.SetQuarantineStatus(ctx, held[0].ID, Released, "admin"); err != nil {
		t.Fatal(err)
	}
	var out []string
	for range 3 {
		id, err := s.Enqueue(ctx, OutboxItem{Recipients: []string{"a@example.org"}, Data: []byte("x"), NextAttempt: now, Created: now, Status: Queued})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	if err := s.Fail(ctx, out[0], "550 no"); err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, out[1]); err != nil {
		t.Fatal(err)
	}
	c, err = s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Counts{QuarantineHeld: 2, QuarantineBytes: held[1].Size + held[2].Size, OutboxQueued: 1, OutboxFailed: 1}); c != want {
		t.Errorf("Counts = %+v, want %+v", c, want)
	}
}
