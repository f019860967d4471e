// Package normalize is the service that repairs the format of a message
// (RFC 4496 §4.6) so that what leaves the gateway is valid RFC 5322/MIME:
// line ends, overlong lines, missing MIME-Version, broken or duplicate
// boundaries, odd attachment names, uuencoded lines of the wrong length,
// invalid base64 or quoted-printable, and raw 8-bit header fields. At MAIL
// and RCPT it refuses command values that cannot be rewritten (an overlong
// or malformed address, a malformed ESMTP parameter), since the milter
// protocol cannot change them in place.
//
// Signed or encrypted content is never modified (PROFILE §6): the verdict
// says Status "skipped", Reason "signed".
//
// Options, under [service.options]:
//
//	repairs = ["line-endings", "long-lines", ...]  # default: all
//	max_size = 52428800                             # larger bodies are skipped
//	on_unrepairable = "continue"                    # or "reject", "tag"
//	tag_field = "X-OPES-Normalize"                  # for "tag"
package normalize

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// Repair names, as the repairs option lists them.
const (
	RepairLineEndings = "line-endings" // bare CR or LF → CRLF
	RepairLongLines   = "long-lines"   // lines over 998 octets: re-encode the part, refold header fields
	RepairEncodings   = "encodings"    // invalid base64/quoted-printable, NUL, 8-bit data declared 7bit
	RepairMIMEVersion = "mime-version" // Content-Type without MIME-Version
	RepairBoundaries  = "boundaries"   // missing, unused, duplicate or unterminated boundaries
	RepairPartHeaders = "part-headers" // malformed header lines inside the body
	RepairPartNames   = "part-names"   // filename/name parameters
	RepairUuencode    = "uuencode"     // uuencoded lines of the wrong length
	RepairHeader8bit  = "header-8bit"  // raw non-ASCII in header fields → RFC 2047/2231
	RepairCommands    = "commands"     // refuse unrewritable MAIL/RCPT values
)

// AllRepairs lists every repair, the default.
var allRepairs = []string{
	RepairLineEndings, RepairLongLines, RepairEncodings, RepairMIMEVersion, RepairBoundaries,
	RepairPartHeaders, RepairPartNames, RepairUuencode, RepairHeader8bit, RepairCommands,
}

// Defaults.
const (
	defaultMaxSize  = 50 << 20
	defaultTagField = "X-OPES-Normalize"
)

type options struct {
	Repairs        *[]string `toml:"repairs"`
	MaxSize        *int64    `toml:"max_size"`
	OnUnrepairable string    `toml:"on_unrepairable"`
	TagField       string    `toml:"tag_field"`
}

// onUnrepairable is what a message with a problem the service cannot fix
// gets.
type onUnrepairable uint8

const (
	unrepairableContinue onUnrepairable = iota // deliver with what could be repaired
	unrepairableReject                         // 554 5.6.5 at the end of data
	unrepairableTag                            // deliver, with a header field naming the problems
)

// config is the validated option set.
type config struct {
	on             repairSet
	maxSize        int64
	onUnrepairable onUnrepairable
	tagField       string
}

type service struct {
	cfg   config
	log   *slog.Logger
	needs opes.Needs
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does. Decisions are
// logged through slog.Default(); NewWithLogger chooses the logger.
func New(decode func(v any) error) (opes.Service, error) {
	return NewWithLogger(decode, nil)
}

// NewWithLogger is New with the logger for the per-message repair lines
// (nil: slog.Default()).
func NewWithLogger(decode func(v any) error, log *slog.Logger) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("normalize: decode options: %w", err)
		}
	}
	cfg, err := o.config()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	st := opes.StagesOf(opes.StageEOM)
	if cfg.on.has(RepairCommands) {
		st = opes.StagesOf(opes.StageMail, opes.StageRcpt, opes.StageEOM)
	}
	return &service{cfg: cfg, log: log, needs: opes.Needs{Stages: st, Headers: true, Body: true}}, nil
}

func (o options) config() (config, error) {
	cfg := config{maxSize: defaultMaxSize, tagField: defaultTagField}
	names := allRepairs
	if o.Repairs != nil {
		names = *o.Repairs
	}
	for i, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if !slices.Contains(allRepairs, n) {
			return cfg, opes.FieldErrorf(fmt.Sprintf("repairs[%d]", i+1), "unknown repair %q (want one of %s)", n, strings.Join(allRepairs, ", "))
		}
		cfg.on = cfg.on.add(n)
	}
	if o.MaxSize != nil {
		if *o.MaxSize <= 0 {
			return cfg, opes.FieldErrorf("max_size", "must be a positive number of octets, got %d", *o.MaxSize)
		}
		cfg.maxSize = *o.MaxSize
	}
	switch strings.ToLower(strings.TrimSpace(o.OnUnrepairable)) {
	case "", "continue":
		cfg.onUnrepairable = unrepairableContinue
	case "reject":
		cfg.onUnrepairable = unrepairableReject
	case "tag":
		cfg.onUnrepairable = unrepairableTag
	default:
		return cfg, opes.FieldErrorf("on_unrepairable", "%q is not continue, reject or tag", o.OnUnrepairable)
	}
	if o.TagField != "" {
		name := strings.TrimSpace(o.TagField)
		if err := checkTagField(name); err != nil {
			return cfg, &opes.FieldError{Field: "tag_field", Err: err}
		}
		cfg.tagField = name
	}
	return cfg, nil
}

func checkTagField(name string) error {
	if name == "" || len(name) > 76 {
		return errors.New("field name is empty or longer than 76 octets")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return fmt.Errorf("field name %q contains byte 0x%02x", name, c)
		}
	}
	if isTraceField(name) {
		return fmt.Errorf("%s is a trace field only the processor writes", name)
	}
	return nil
}

func isTraceField(name string) bool {
	return strings.EqualFold(name, opes.FieldSystem) || strings.EqualFold(name, opes.FieldVia) || strings.EqualFold(name, opes.FieldBypass)
}

func (s *service) Needs() opes.Needs { return s.needs }

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

func (t *txState) Mail(context.Context) (opes.Verdict, error) {
	if !t.s.cfg.on.has(RepairCommands) || t.tx.Sender == nil {
		return opes.ContinueVerdict, nil
	}
	return commandVerdict("Sender", *t.tx.Sender, smtputf8(t.tx), false), nil
}

func (t *txState) Rcpt(_ context.Context, r *opes.Recipient) (opes.Verdict, error) {
	if !t.s.cfg.on.has(RepairCommands) || r == nil {
		return opes.ContinueVerdict, nil
	}
	return commandVerdict("Recipient", r.Address, smtputf8(t.tx), true), nil
}

func smtputf8(tx *opes.Transaction) bool {
	if tx.Sender == nil {
		return false
	}
	_, ok := tx.Sender.Arg("SMTPUTF8")
	return ok
}

// Signed or encrypted content types (RFC 1847, RFC 3156, RFC 8551): their
// bytes are covered by a signature or are ciphertext, so no repair may
// touch them.
var signedTypes = []string{
	"multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime",
	"application/pgp-encrypted", "application/pkcs7-signature", "application/x-pkcs7-signature",
	"application/pgp-signature",
}

func isSigned(mediaType string) bool { return slices.Contains(signedTypes, mediaType) }

func (t *txState) EndOfMessage(context.Context) (opes.Verdict, error) {
	tx, cfg := t.tx, t.s.cfg
	if tx.Size() > cfg.maxSize {
		return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "too-large"}, nil
	}
	top := topHeader(tx.Header)
	if isSigned(top.mediaType()) {
		return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "signed"}, nil
	}
	var res *result
	var bodyErr error
	if body := tx.CurrentBody(); body != nil && body.Size() > 0 {
		bodyErr = tx.ReplaceBody(func(w *opes.Body) error {
			var err error
			res, err = rewrite(body.Reader(), w, top, cfg.on, smtputf8(tx))
			if err == nil && !res.bodyChanged {
				return errUnchanged
			}
			return err
		})
	} else {
		res, bodyErr = rewrite(strings.NewReader(""), discard{}, top, cfg.on, smtputf8(tx))
	}
	switch {
	case errors.Is(bodyErr, errSigned):
		return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "signed"}, nil
	case errors.Is(bodyErr, errUnchanged):
	case bodyErr != nil:
		return opes.Verdict{}, fmt.Errorf("normalize: rewrite body: %w", bodyErr)
	case res == nil:
		return opes.Verdict{}, errors.New("normalize: body was not read")
	}
	if err := applyTop(tx.Header, res.top); err != nil {
		return opes.Verdict{}, fmt.Errorf("normalize: %w", err)
	}
	rep := res.rep
	attrs := []any{"trace_id", tx.TraceID(), "queue_id", opes.SanitizeText(tx.QueueID, 64),
		"repairs", strings.Join(rep.repairs(), ","), "unrepairable", strings.Join(rep.problems, ",")}
	if len(rep.problems) > 0 {
		switch cfg.onUnrepairable {
		case unrepairableReject:
			t.s.log.Info("normalize: refused", attrs...)
			return opes.Verdict{
				Kind:   opes.Reject,
				Reply:  opes.Reply{Code: 554, Enhanced: "5.6.5", Text: "Message format cannot be normalised (" + rep.problems[0] + ")"},
				Reason: "normalisation impossible",
			}, nil
		case unrepairableTag:
			if err := tx.Header.Add(cfg.tagField, tagValue(rep.problems)); err != nil {
				return opes.Verdict{}, fmt.Errorf("normalize: add %s: %w", cfg.tagField, err)
			}
			t.s.log.Info("normalize: tagged", attrs...)
			return opes.Verdict{Kind: opes.Continue, Action: "tagged", Reason: "unrepairable"}, nil
		}
	}
	if len(rep.done) == 0 {
		if len(rep.problems) > 0 {
			t.s.log.Info("normalize: unrepairable", attrs...)
		}
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	t.s.log.Info("normalize: repaired", attrs...)
	return opes.Verdict{Kind: opes.Continue, Action: "modified", Reason: "repaired " + strings.Join(rep.repairs(), ",")}, nil
}

// tagValue lists the problems within one header line.
func tagValue(problems []string) string {
	v := "unrepairable"
	for _, p := range problems {
		if len(v)+len(p)+2 > 900 {
			break
		}
		v += "; " + p
	}
	return v
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
