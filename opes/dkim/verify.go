package dkim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/readguard"
	"github.com/opesmilter/opes-milter/opes"
)

// FieldAuthResults is the field verification writes (RFC 8601).
const FieldAuthResults = "Authentication-Results"

// Enhanced status code of refusals: RFC 7372 §3.1, "no passing DKIM
// signature found".
const enhancedNoPass = "5.7.20"

func (s *service) configureVerify(o *options) error {
	id := strings.TrimSpace(o.AuthservID)
	if id == "" {
		return opes.FieldErrorf("authserv_id", "is required: the name of this host or ADMD in Authentication-Results, e.g. \"mx1.example.net\"")
	}
	if err := checkAuthservID(id); err != nil {
		return &opes.FieldError{Field: "authserv_id", Err: err}
	}
	s.authservID = id
	var err error
	if s.onFail, err = parseAction(o.OnFail, "reject", "quarantine"); err != nil {
		return &opes.FieldError{Field: "on_fail", Err: err}
	}
	if s.onNone, err = parseAction(o.OnNone, "reject", "quarantine"); err != nil {
		return &opes.FieldError{Field: "on_none", Err: err}
	}
	if s.onTempError, err = parseAction(o.OnTempError, "tempfail"); err != nil {
		return &opes.FieldError{Field: "on_temperror", Err: err}
	}
	s.maxSignatures = DefaultMaxSignatures
	if o.MaxSignatures != 0 {
		if o.MaxSignatures < 1 || o.MaxSignatures > maxMaxSignatures {
			return opes.FieldErrorf("max_signatures", "%d is not between 1 and %d", o.MaxSignatures, maxMaxSignatures)
		}
		s.maxSignatures = o.MaxSignatures
	}
	s.timeout = DefaultTimeout
	if o.Timeout != "" {
		d, err := time.ParseDuration(o.Timeout)
		if err != nil || d <= 0 || d > maxTimeout {
			return opes.FieldErrorf("timeout", "%q is not a duration between 0 and %s, e.g. \"10s\"", o.Timeout, maxTimeout)
		}
		s.timeout = d
	}
	return nil
}

// checkAuthservID allows an RFC 2045 token (a host name in practice), so
// the value needs no quoting and compares as a plain string.
func checkAuthservID(id string) error {
	if err := opes.CheckPrintable(id, 255); err != nil {
		return err
	}
	if i := strings.IndexAny(id, " ()<>@,;:\\\"/[]?="); i >= 0 {
		return fmt.Errorf("%q contains %q: use a host name such as \"mx1.example.net\"", id, id[i])
	}
	return nil
}

// parseAction reads an on_* option: "continue" (the default) or one of
// allowed.
func parseAction(v string, allowed ...string) (action, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "" || v == "continue" {
		return actContinue, nil
	}
	for _, a := range allowed {
		if v == a {
			switch a {
			case "reject":
				return actReject, nil
			case "quarantine":
				return actQuarantine, nil
			case "tempfail":
				return actTempFail, nil
			}
		}
	}
	return 0, fmt.Errorf("%q is not one of continue, %s", v, strings.Join(allowed, ", "))
}

// sigResult is the outcome for one signature, as Authentication-Results
// reports it.
type sigResult struct {
	value    authres.ResultValue
	reason   string
	domain   string // header.d; "" when not a valid domain name
	selector string // header.s
	b        string // header.b: the first 8 characters of b= (RFC 6008)
}

// verifyMessage checks the signatures of the message as the MTA sent it,
// records the results and applies on_fail, on_none and on_temperror.
func (s *service) verifyMessage(ctx context.Context, tx *opes.Transaction) (opes.Verdict, error) {
	fields := tx.Header.MessageFields()
	results, err := s.verify(ctx, fields, tx.Body)
	if err != nil {
		return opes.Verdict{}, err
	}
	if err := removeForged(tx.Header, s.authservID); err != nil {
		return opes.Verdict{}, fmt.Errorf("dkim: remove forged %s: %w", FieldAuthResults, err)
	}
	// Prepended, as RFC 8601 §5 asks: the results of this hop are the
	// topmost, above those of hops the message passed before.
	if err := tx.Header.Prepend(FieldAuthResults, formatResults(s.authservID, results)); err != nil {
		return opes.Verdict{}, fmt.Errorf("dkim: add %s: %w", FieldAuthResults, err)
	}
	tagged := opes.Verdict{Kind: opes.Continue, Action: "header-added"}
	switch summarize(results) {
	case authres.ResultPass:
		return tagged, nil
	case authres.ResultTempError:
		if s.onTempError == actTempFail {
			return opes.Verdict{Kind: opes.TempFail, Reason: "DKIM key lookup failed"}, nil
		}
		return tagged, nil
	case authres.ResultFail:
		return s.verdict(s.onFail, "DKIM signature invalid", tagged), nil
	}
	return s.verdict(s.onNone, "no DKIM signature", tagged), nil
}

func (s *service) verdict(a action, reason string, otherwise opes.Verdict) opes.Verdict {
	switch a {
	case actReject:
		return opes.Verdict{Kind: opes.Reject, Reason: reason, Reply: opes.Reply{Enhanced: enhancedNoPass}}
	case actQuarantine:
		return opes.Verdict{Kind: opes.Quarantine, Reason: reason}
	}
	return otherwise
}

// summarize is the message's result: pass when one signature passed; else
// temperror when a key lookup failed temporarily (the retry may pass);
// else fail when a signature failed or was unusable (permerror); none
// for unsigned mail.
func summarize(rs []sigResult) authres.ResultValue {
	out := authres.ResultValue(authres.ResultNone)
	for _, r := range rs {
		switch {
		case r.value == authres.ResultPass:
			return authres.ResultPass
		case r.value == authres.ResultTempError:
			out = authres.ResultTempError
		case out == authres.ResultNone:
			out = authres.ResultFail
		}
	}
	return out
}

// verify runs go-msgauth over the header and body, with the key lookup
// bounded by ctx and the timeout, and returns one result per signature
// verified (the first maxSignatures). An error means the message could not
// be read.
func (s *service) verify(ctx context.Context, fields []opes.HeaderField, body *opes.Body) ([]sigResult, error) {
	var sigs []map[string]string
	for _, f := range fields {
		if strings.EqualFold(strings.TrimSpace(f.Name), "DKIM-Signature") && len(sigs) < s.maxSignatures {
			sigs = append(sigs, parseTags(f.Value))
		}
	}
	if len(sigs) == 0 {
		return nil, nil
	}
	var b io.Reader = strings.NewReader("")
	if body != nil {
		b = body.Reader()
	}
	gr := readguard.New(ctx, io.MultiReader(strings.NewReader(opes.FormatHeader(fields)+"\r\n"), b))
	verifs, err := dkim.VerifyWithOptions(gr, &dkim.VerifyOptions{
		LookupTXT:        s.lookup(ctx),
		MaxVerifications: s.maxSignatures,
	})
	if gr.Err() != nil {
		return nil, fmt.Errorf("dkim: verify: read message: %w", gr.Err())
	}
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		return nil, fmt.Errorf("dkim: verify: %w", err)
	}
	out := make([]sigResult, 0, len(verifs))
	for i, v := range verifs {
		r := sigResult{value: authres.ResultPass}
		if i < len(sigs) {
			r.domain = domainParam(sigs[i]["d"])
			r.selector = domainParam(sigs[i]["s"])
			r.b = bPrefix(sigs[i]["b"])
		}
		switch {
		case v.Err == nil:
		case dkim.IsTempFail(v.Err):
			r.value = authres.ResultTempError
		case dkim.IsPermFail(v.Err):
			r.value = authres.ResultPermError
		default:
			r.value = authres.ResultFail
		}
		if v.Err != nil {
			r.reason = reasonText(v.Err)
		}
		out = append(out, r)
	}
	return out, nil
}

// lookup adapts the resolver to go-msgauth, which tells a temporary
// failure (temperror) from a permanent one (permerror: no key) by
// net.Error.Temporary. Only "no such name or record" is permanent: a
// timeout, SERVFAIL or a cancelled context may pass on a retry.
func (s *service) lookup(ctx context.Context) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		if err := ctx.Err(); err != nil {
			return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true}
		}
		lctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		txt, err := s.lookupTXT(lctx, name)
		if err == nil {
			return txt, nil
		}
		msg := err.Error()
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			if dnsErr.IsNotFound {
				return nil, &net.DNSError{Err: "no key record", Name: name, IsNotFound: true}
			}
			msg = dnsErr.Err // without the "lookup <name>: " the new error adds
		}
		return nil, &net.DNSError{Err: opes.SanitizeText(msg, 60), Name: name, IsTemporary: true}
	}
}

// parseTags splits a DKIM-Signature value into its tags (RFC 6376
// §3.2), white space removed, as go-msgauth reads them.
func parseTags(v string) map[string]string {
	tags := map[string]string{}
	for _, p := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; !dup {
			tags[k] = strings.Join(strings.Fields(val), "")
		}
	}
	return tags
}

// domainParam returns d if it is a domain name, else "": wire values go
// into the header only when they cannot inject anything.
func domainParam(d string) string {
	if checkDomainName(strings.ToLower(d)) != nil {
		return ""
	}
	return d
}

func bPrefix(b string) string {
	if len(b) < 8 {
		return ""
	}
	for i := 0; i < 8; i++ {
		if c := b[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return ""
		}
	}
	return b[:8]
}

// reasonText is the error as a short printable reason without quotes or
// backslashes (it goes into a quoted-string).
func reasonText(err error) string {
	r := strings.TrimPrefix(err.Error(), "dkim: ")
	r = strings.NewReplacer(`"`, "'", `\`, "/").Replace(opes.SanitizeText(r, 100))
	return r
}

// formatResults renders the field value: the authserv-id, then one
// result per signature, each on its own folded line.
func formatResults(id string, rs []sigResult) string {
	if len(rs) == 0 {
		return id + ";\r\n\t" + resinfo(&authres.GenericResult{Method: "dkim", Value: authres.ResultNone})
	}
	var b strings.Builder
	b.WriteString(id)
	for _, r := range rs {
		params := map[string]string{"header.d": r.domain, "header.s": r.selector, "header.b": r.b, "reason": r.reason}
		b.WriteString(";\r\n\t")
		b.WriteString(resinfo(&authres.GenericResult{Method: "dkim", Value: r.value, Params: params}))
	}
	return b.String()
}

// resinfo formats one result with go-msgauth (which quotes what needs
// quoting and leaves out empty parameters).
func resinfo(r authres.Result) string {
	const id = "x"
	return strings.TrimSpace(strings.TrimPrefix(authres.Format(id, []authres.Result{r}), id+";"))
}

// removeForged deletes the Authentication-Results fields that claim id:
// they came from outside, since ours is only added now.
func removeForged(h *opes.Header, id string) error {
	var forged []int // 1-based among the fields of that name
	n := 0
	for _, f := range h.MessageFields() {
		if !strings.EqualFold(strings.TrimSpace(f.Name), FieldAuthResults) {
			continue
		}
		n++
		if strings.EqualFold(authservIDOf(f.Value), id) {
			forged = append(forged, n)
		}
	}
	// From the last, so earlier indexes stay valid.
	for i := len(forged) - 1; i >= 0; i-- {
		if err := h.ApplyChange(opes.HeaderChange{Kind: opes.DeleteField, Name: FieldAuthResults, Index: forged[i]}); err != nil {
			return err
		}
	}
	return nil
}

// authservIDOf returns the authserv-id of an Authentication-Results value
// (RFC 8601 §2.2): after optional comments and white space, a token or a
// quoted-string.
func authservIDOf(v string) string {
	v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	for {
		v = strings.TrimLeft(v, " \t")
		if !strings.HasPrefix(v, "(") {
			break
		}
		end := commentEnd(v)
		if end < 0 {
			return ""
		}
		v = v[end+1:]
	}
	if strings.HasPrefix(v, `"`) {
		var b strings.Builder
		for i := 1; i < len(v); i++ {
			switch c := v[i]; c {
			case '\\':
				if i+1 < len(v) {
					i++
					b.WriteByte(v[i])
				}
			case '"':
				return b.String()
			default:
				b.WriteByte(c)
			}
		}
		return ""
	}
	if i := strings.IndexAny(v, " \t;("); i >= 0 {
		v = v[:i]
	}
	return v
}

// commentEnd returns the index of the parenthesis closing the comment
// v starts with (comments nest, backslash quotes), or -1.
func commentEnd(v string) int {
	depth := 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return i
			}
		}
	}
	return -1
}
