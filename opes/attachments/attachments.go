// Package attachments is the security filter of RFC 4496 §4.1 for mail:
// at the end of the message it walks every MIME part, nested multiparts
// and attached messages included, and blocks attachments by file name
// extension (also of the members of zip archives), by declared or sniffed
// content type, encrypted archives and archive bombs. Every input is
// hostile: nesting depth, part count and scanned octets are bounded, a
// part is streamed (only its first 512 decoded octets are kept, a zip is
// spooled to an unlinked temporary file), and a message that cannot be
// parsed or exceeds a bound is a finding of its own.
//
// The first finding decides: reject (554 5.7.1), quarantine, tag (add
// X-OPES-Attachment: blocked=<reason> and deliver) or replace (each
// blocked part becomes a short text/plain notice, every other octet of
// the body is kept; the new body is scanned again, and a message whose
// blocked part cannot be cut out alone is refused instead).
//
// Options, under [service.options]:
//
//	block_extensions = ["exe", "scr", "js"]  # default: DefaultExtensions
//	block_types = ["application/x-msdownload"] # default: DefaultTypes
//	block_encrypted_archives = true
//	action = "reject"            # reject | quarantine | tag | replace
//	malformed_action = "reject"  # for malformed, too-deep, too-many-parts, too-large
//	max_depth = 20
//	max_parts = 1000
//	max_archive_size = 10485760  # zip parts up to this size are listed
//	max_archive_members = 10000
//	max_scan_size = 104857600    # octets of message read at most
package attachments

import (
	"context"
	"fmt"
	"mime"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// DefaultExtensions are the file name extensions blocked when
// block_extensions is not set: executables and scripts Windows runs on a
// double click.
var DefaultExtensions = []string{
	"exe", "scr", "js", "jse", "vbs", "vbe", "bat", "cmd", "com", "pif",
	"jar", "msi", "hta", "wsf", "cpl", "lnk", "ps1",
}

// DefaultTypes are the content types blocked when block_types is not set.
var DefaultTypes = []string{
	"application/x-msdownload", "application/x-dosexec",
	"application/x-msdos-program", "application/x-executable",
}

// Defaults of the bounds.
const (
	DefaultMaxDepth          = 20
	DefaultMaxParts          = 1000
	DefaultMaxArchiveSize    = 10 << 20
	DefaultMaxArchiveMembers = 10000
	DefaultMaxScanSize       = 100 << 20
)

// Field is the header field the "tag" action adds.
const Field = "X-OPES-Attachment"

// Finding kinds, as they appear in reasons and the tag header.
const (
	FindingExtension       = "blocked-extension"
	FindingDoubleExtension = "double-extension"
	FindingType            = "blocked-type"
	FindingEncrypted       = "encrypted-archive"
	FindingArchiveBomb     = "archive-bomb"
	FindingMalformed       = "malformed"
	FindingTooDeep         = "too-deep"
	FindingTooManyParts    = "too-many-parts"
	FindingTooLarge        = "too-large"
)

type options struct {
	BlockExtensions        *[]string `toml:"block_extensions"`
	BlockTypes             *[]string `toml:"block_types"`
	BlockEncryptedArchives *bool     `toml:"block_encrypted_archives"`
	Action                 string    `toml:"action"`
	MalformedAction        string    `toml:"malformed_action"`
	MaxDepth               int       `toml:"max_depth"`
	MaxParts               int       `toml:"max_parts"`
	MaxArchiveSize         int64     `toml:"max_archive_size"`
	MaxArchiveMembers      int       `toml:"max_archive_members"`
	MaxScanSize            int64     `toml:"max_scan_size"`
}

type action uint8

const (
	actReject action = iota
	actQuarantine
	actTag
	actReplace
)

func parseAction(field, v string) (action, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "reject":
		return actReject, nil
	case "quarantine":
		return actQuarantine, nil
	case "tag":
		return actTag, nil
	case "replace":
		if field == "action" {
			return actReplace, nil
		}
		return 0, opes.FieldErrorf(field, "a message that cannot be parsed has no part to replace (want reject, quarantine or tag)")
	}
	if field == "action" {
		return 0, opes.FieldErrorf(field, "unknown action %q (want reject, quarantine, tag or replace)", v)
	}
	return 0, opes.FieldErrorf(field, "unknown action %q (want reject, quarantine or tag)", v)
}

// Service is a configured attachments filter.
type Service struct {
	extensions map[string]bool
	types      map[string]bool
	encrypted  bool
	action     action
	malformed  action
	limits     limits
}

type limits struct {
	depth, parts, members int
	archiveSize, scanSize int64
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("attachments: decode options: %w", err)
		}
	}
	s := &Service{
		extensions: map[string]bool{},
		types:      map[string]bool{},
		encrypted:  true,
		limits: limits{depth: DefaultMaxDepth, parts: DefaultMaxParts, members: DefaultMaxArchiveMembers,
			archiveSize: DefaultMaxArchiveSize, scanSize: DefaultMaxScanSize},
	}
	exts := DefaultExtensions
	if o.BlockExtensions != nil {
		exts = *o.BlockExtensions
	}
	for i, e := range exts {
		e = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(e), "."))
		if e == "" || strings.ContainsAny(e, "./\\ \t") {
			return nil, opes.FieldErrorf(fmt.Sprintf("block_extensions[%d]", i+1), "%q is not a file name extension", exts[i])
		}
		s.extensions[e] = true
	}
	types := DefaultTypes
	if o.BlockTypes != nil {
		types = *o.BlockTypes
	}
	for i, t := range types {
		mt, _, err := mime.ParseMediaType(t)
		if err != nil || !strings.Contains(mt, "/") {
			return nil, opes.FieldErrorf(fmt.Sprintf("block_types[%d]", i+1), "%q is not a media type", t)
		}
		s.types[mt] = true
	}
	if o.BlockEncryptedArchives != nil {
		s.encrypted = *o.BlockEncryptedArchives
	}
	var err error
	if s.action, err = parseAction("action", o.Action); err != nil {
		return nil, err
	}
	if s.malformed, err = parseAction("malformed_action", o.MalformedAction); err != nil {
		return nil, err
	}
	type bound struct {
		field    string
		v        int64
		min, max int64
		set      func(int64)
	}
	for _, b := range []bound{
		{"max_depth", int64(o.MaxDepth), 1, 1000, func(v int64) { s.limits.depth = int(v) }},
		{"max_parts", int64(o.MaxParts), 1, 1000000, func(v int64) { s.limits.parts = int(v) }},
		{"max_archive_size", o.MaxArchiveSize, 1, 1 << 30, func(v int64) { s.limits.archiveSize = v }},
		{"max_archive_members", int64(o.MaxArchiveMembers), 1, 1000000, func(v int64) { s.limits.members = int(v) }},
		{"max_scan_size", o.MaxScanSize, 1 << 10, 1 << 40, func(v int64) { s.limits.scanSize = v }},
	} {
		switch {
		case b.v == 0:
		case b.v < b.min || b.v > b.max:
			return nil, opes.FieldErrorf(b.field, "%d is not between %d and %d", b.v, b.min, b.max)
		default:
			b.set(b.v)
		}
	}
	return s, nil
}

// Needs implements opes.Service.
func (s *Service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

// Begin implements opes.Service.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *Service
	tx *opes.Transaction
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	f, err := t.s.Scan(ctx, t.tx)
	if err != nil {
		return opes.Verdict{}, err
	}
	if f == nil {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	act := t.s.action
	if f.Structural() {
		act = t.s.malformed
	}
	if act == actReplace {
		return t.replace(ctx, f)
	}
	return t.verdict(act, f)
}

// verdict applies a reject, quarantine or tag action to a finding.
func (t *txState) verdict(act action, f *Finding) (opes.Verdict, error) {
	reason := f.String()
	switch act {
	case actQuarantine:
		return opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: "attachment " + reason}, nil
	case actTag:
		if err := t.tx.Header.Add(Field, "blocked="+reason); err != nil {
			return opes.Verdict{}, fmt.Errorf("attachments: add %s: %w", Field, err)
		}
		return opes.Verdict{Kind: opes.Continue, Action: "header-added", Reason: "attachment " + reason}, nil
	}
	return opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "attachment " + reason,
		Reply: opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Attachment not accepted: " + reason}}, nil
}

// Finding is the first reason the filter found to block a message.
type Finding struct {
	Kind   string // one of the Finding* constants
	Name   string // file name or archive member, sanitized; may be empty
	Detail string // e.g. the blocked extension or type, sanitized

	path []int // multipart indexes of the part to replace; nil for the whole message
}

// Structural reports whether the finding is about the message's structure
// rather than its content: malformed_action applies to it.
func (f *Finding) Structural() bool {
	switch f.Kind {
	case FindingMalformed, FindingTooDeep, FindingTooManyParts, FindingTooLarge:
		return true
	}
	return false
}

// String is the reason: printable US-ASCII, bounded, safe in a header
// field and an SMTP reply.
func (f *Finding) String() string {
	s := f.Kind
	if f.Detail != "" {
		s += " " + f.Detail
	}
	if f.Name != "" {
		s += " (" + f.Name + ")"
	}
	return s
}

// sanitize keeps printable US-ASCII other than quotes, backslashes and
// parentheses, and bounds the length: names come from the sender.
func sanitize(v string, max int) string {
	var b strings.Builder
	for _, r := range v {
		switch {
		case r < 0x20 || r > 0x7e || r == '"' || r == '\\' || r == '(' || r == ')' || r == ';':
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
		if b.Len() >= max {
			b.WriteString("...")
			break
		}
	}
	return b.String()
}
