package opes

import (
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
)

// HeaderField is one field of the message header.
type HeaderField struct {
	Name string
	// Value is the text after the colon as the MTA passed it (leading
	// white space and folding kept), or as a service set it.
	Value string

	orig int  // index among the fields the MTA sent; -1 for a new field
	top  bool // a new field put at the top of the header (Prepend)
}

// Header is the working copy of a message header. It remembers which
// fields came from the MTA so that the processor can express the changes
// services made as milter header actions.
type Header struct {
	fields []HeaderField
	sent   []HeaderField // as received, never changed
}

// NewHeader returns an empty header.
func NewHeader() *Header { return &Header{} }

// received appends a field as the MTA sent it.
func (h *Header) received(name, value string) {
	f := HeaderField{Name: name, Value: value, orig: len(h.sent)}
	h.sent = append(h.sent, f)
	h.fields = append(h.fields, f)
}

// Len is the number of fields.
func (h *Header) Len() int { return len(h.fields) }

// Fields returns a copy of the fields in order.
func (h *Header) Fields() []HeaderField {
	out := make([]HeaderField, len(h.fields))
	copy(out, h.fields)
	return out
}

// Get returns the value of the first field named name, with surrounding
// white space and folding removed, or "".
func (h *Header) Get(name string) string {
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			return unfold(f.Value)
		}
	}
	return ""
}

// Values returns the unfolded values of every field named name.
func (h *Header) Values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			out = append(out, unfold(f.Value))
		}
	}
	return out
}

// Add appends a new field at the end of the header.
func (h *Header) Add(name, value string) error {
	if err := checkFieldName(name); err != nil {
		return err
	}
	v, err := cleanFieldValue(value)
	if err != nil {
		return err
	}
	h.fields = append(h.fields, HeaderField{Name: name, Value: v, orig: -1})
	return nil
}

// Prepend adds a new field at the top of the header, below the OPES trace
// fields: where a receiving system's own results go (Authentication-Results,
// RFC 8601 §5; DKIM-Signature, RFC 6376 §5.6). Fields prepended later
// end up above those prepended earlier.
func (h *Header) Prepend(name, value string) error {
	if err := checkFieldName(name); err != nil {
		return err
	}
	v, err := cleanFieldValue(value)
	if err != nil {
		return err
	}
	i := 0
	for i < len(h.fields) && h.fields[i].orig == origOwn {
		i++
	}
	h.fields = slices.Insert(h.fields, i, HeaderField{Name: name, Value: v, orig: -1, top: true})
	return nil
}

// Set replaces the value of the first field named name, or appends the
// field if there is none.
func (h *Header) Set(name, value string) error {
	if err := checkFieldName(name); err != nil {
		return err
	}
	v, err := cleanFieldValue(value)
	if err != nil {
		return err
	}
	for i := range h.fields {
		if strings.EqualFold(h.fields[i].Name, name) {
			h.fields[i].Value = v
			return nil
		}
	}
	h.fields = append(h.fields, HeaderField{Name: name, Value: v, orig: -1})
	return nil
}

// SetAt replaces the value of the n-th field named name (1-based, in the
// working copy's order) in place; it reports whether that field exists.
// Trace fields cannot be changed.
func (h *Header) SetAt(name string, n int, value string) (bool, error) {
	if err := checkFieldName(name); err != nil {
		return false, err
	}
	if isTraceField(name) {
		return false, fmt.Errorf("opes: %s is a trace field: only the processor writes it", name)
	}
	v, err := cleanFieldValue(value)
	if err != nil {
		return false, err
	}
	if i := h.nth(name, n); i >= 0 {
		h.fields[i].Value = v
		return true, nil
	}
	return false, nil
}

// DelAt removes the n-th field named name (1-based); it reports whether
// there was one. Trace fields cannot be removed.
func (h *Header) DelAt(name string, n int) (bool, error) {
	if isTraceField(name) {
		return false, fmt.Errorf("opes: %s is a trace field: only the processor writes it", name)
	}
	if i := h.nth(name, n); i >= 0 {
		h.fields = append(h.fields[:i], h.fields[i+1:]...)
		return true, nil
	}
	return false, nil
}

// nth is the index of the n-th field named name, -1 if none.
func (h *Header) nth(name string, n int) int {
	if n < 1 {
		return -1
	}
	for i := range h.fields {
		if strings.EqualFold(h.fields[i].Name, name) {
			if n--; n == 0 {
				return i
			}
		}
	}
	return -1
}

// Del removes every field named name.
func (h *Header) Del(name string) {
	out := h.fields[:0]
	for _, f := range h.fields {
		if !strings.EqualFold(f.Name, name) {
			out = append(out, f)
		}
	}
	h.fields = out
}

func unfold(v string) string {
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// checkFieldName enforces RFC 5322 ftext and a sane length.
func checkFieldName(name string) error {
	if name == "" || len(name) > 76 {
		return fmt.Errorf("opes: header field name %q: empty or longer than 76 octets", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return fmt.Errorf("opes: header field name %q: byte 0x%02x not allowed", name, c)
		}
	}
	return nil
}

// cleanFieldValue turns a value a service supplied into one that is safe
// to hand to the MTA: CR and LF only as part of folding, no NUL, no other
// control characters. A value whose line breaks are not followed by white
// space would start a new header field and is refused.
func cleanFieldValue(v string) (string, error) {
	if len(v) > 16<<10 {
		return "", fmt.Errorf("opes: header field value longer than 16 KiB")
	}
	v = strings.ReplaceAll(v, "\r\n", "\n")
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\n':
			if i+1 >= len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
				return "", fmt.Errorf("opes: header field value has a line break not followed by white space")
			}
		case c == '\t':
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("opes: header field value contains control byte 0x%02x", c)
		}
	}
	// Canonical folding is CRLF; go-milter turns it into the LF the
	// milter protocol expects.
	return strings.ReplaceAll(strings.TrimLeft(v, " \t"), "\n", "\r\n"), nil
}

// HeaderChangeKind says what a HeaderChange does.
type HeaderChangeKind uint8

// Kinds of header changes, as the milter protocol knows them.
const (
	InsertField HeaderChangeKind = iota // insert at Index (0 = top)
	AppendField                         // add at the end
	ChangeField                         // replace the Index-th (1-based) field named Name
	DeleteField                         // delete the Index-th (1-based) field named Name
)

// HeaderChange is one header modification to send to the MTA. Values are
// without the leading space and fold with "\r\n\t".
type HeaderChange struct {
	Kind  HeaderChangeKind
	Name  string
	Value string
	Index int
}

// diff expresses the working copy against what the MTA sent, in an order
// safe to apply: changes first, then deletions from the last occurrence
// backwards (deleting shifts later same-name indexes), then the fields
// prepended at the top — insertions at index 0, last first, after the
// changes and deletions whose per-name indexes they would shift — and
// apart, the appends. The processor inserts its trace fields between the
// two, so that they end up above the prepended ones.
func (h *Header) diff() (first, appends []HeaderChange) {
	occurrence := make([]int, len(h.sent)) // 1-based per-name index of each sent field
	count := map[string]int{}
	for i, f := range h.sent {
		k := strings.ToLower(f.Name)
		count[k]++
		occurrence[i] = count[k]
	}
	present := make([]bool, len(h.sent))
	var changes, deletes, prepends []HeaderChange
	for _, f := range h.fields {
		if f.orig == origOwn {
			continue // the processor inserts its own trace fields itself
		}
		if f.orig < 0 {
			if f.top {
				prepends = append(prepends, HeaderChange{Kind: InsertField, Name: f.Name, Value: f.Value, Index: 0})
			} else {
				appends = append(appends, HeaderChange{Kind: AppendField, Name: f.Name, Value: f.Value})
			}
			continue
		}
		present[f.orig] = true
		if f.Value != h.sent[f.orig].Value {
			changes = append(changes, HeaderChange{Kind: ChangeField, Name: h.sent[f.orig].Name, Value: strings.TrimLeft(f.Value, " \t"), Index: occurrence[f.orig]})
		}
	}
	for i := len(h.sent) - 1; i >= 0; i-- {
		if !present[i] {
			deletes = append(deletes, HeaderChange{Kind: DeleteField, Name: h.sent[i].Name, Index: occurrence[i]})
		}
	}
	slices.Reverse(prepends)
	first = append(changes, deletes...)
	return append(first, prepends...), appends
}

// ApplyChanges does to fields what an MTA does with the changes: it is
// how `opesctl explain` and the tests show the header as it will be
// delivered. Values of new fields get the conventional space after the
// colon.
func ApplyChanges(fields []HeaderField, changes []HeaderChange) []HeaderField {
	out := make([]HeaderField, len(fields))
	copy(out, fields)
	nth := func(name string, n int) int {
		for i := range out {
			if strings.EqualFold(out[i].Name, name) {
				if n--; n == 0 {
					return i
				}
			}
		}
		return -1
	}
	for _, c := range changes {
		f := HeaderField{Name: c.Name, Value: " " + c.Value, orig: -1}
		switch c.Kind {
		case InsertField:
			i := min(max(c.Index, 0), len(out))
			out = append(out[:i], append([]HeaderField{f}, out[i:]...)...)
		case AppendField:
			out = append(out, f)
		case ChangeField:
			if i := nth(c.Name, c.Index); i >= 0 {
				out[i].Value = f.Value
			}
		case DeleteField:
			if i := nth(c.Name, c.Index); i >= 0 {
				out = append(out[:i], out[i+1:]...)
			}
		}
	}
	return out
}

// FormatHeader renders fields as wire text, CRLF line ends.
func FormatHeader(fields []HeaderField) string {
	var b strings.Builder
	for _, f := range fields {
		b.WriteString(f.Name)
		b.WriteByte(':')
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(f.Value, "\r\n", "\n"), "\n", "\r\n"))
		b.WriteString("\r\n")
	}
	return b.String()
}

// MarkSubject puts prefix in front of the first Subject field, or adds a
// Subject that is just the prefix. The rest of the raw value, folding and
// encoded words included, is kept byte for byte, so nothing the sender
// wrote is re-encoded or lost. It reports false when the subject already
// starts with the prefix (decoded from RFC 2047 if need be), so a message
// that passes twice (a forward, a second MX) is not marked twice.
func (h *Header) MarkSubject(prefix string) (bool, error) {
	raw, found := "", false
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, "Subject") {
			raw, found = f.Value, true
			break
		}
	}
	if !found {
		return true, h.Add("Subject", prefix)
	}
	subject := h.Get("Subject")
	// A prefix inside an encoded word ("=?UTF-8?Q?[EXTERNAL]_Hi?=") counts;
	// text that does not decode is compared as it is.
	if d, err := new(mime.WordDecoder).DecodeHeader(subject); err == nil {
		subject = d
	}
	if len(subject) >= len(prefix) && strings.EqualFold(subject[:len(prefix)], prefix) {
		return false, nil
	}
	v := prefix
	if rest := strings.TrimLeft(raw, " \t\r\n"); rest != "" {
		v += " " + rest
	}
	return true, h.Set("Subject", v)
}

// CheckPrintable allows non-empty printable US-ASCII of at most max
// octets: what a configured header value or Subject prefix may hold
// (anything else would need RFC 2047 encoding, and CR or LF would start
// a new header field).
func CheckPrintable(v string, max int) error {
	if v == "" {
		return errors.New("is empty")
	}
	if len(v) > max {
		return fmt.Errorf("is longer than %d octets", max)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("has byte 0x%02x at offset %d: only printable US-ASCII is allowed", c, i)
		}
	}
	return nil
}
