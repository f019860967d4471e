package normalize

import (
	"encoding/base64"
	"fmt"
	"mime"
	"net/mail"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/opesmilter/opes-milter/opes"
)

// maxLine is RFC 5322 §2.1.1's limit on a line, CRLF excluded.
const maxLine = 998

// hfield is one header field of a part as it will be written.
type hfield struct {
	name    string
	value   string // text after the colon; original folding kept unless changed
	changed bool   // value replaced (written as "Name: value")
	added   bool   // not in the input
	deleted bool   // dropped (a duplicate that would confuse readers)
}

// partHeader is the header of one entity with what the parser needs from
// it.
type partHeader struct {
	fields   []hfield
	top      bool   // the message header (tx.Header), changed through the processor
	hasCT    bool   // a Content-Type field is present
	mt       string // media type, lower case; "text/plain" when absent or unusable
	params   map[string]string
	boundary string // for multipart: the boundary the body uses
	cte      string // Content-Transfer-Encoding, lower case
}

func (h *partHeader) mediaType() string { return h.mt }

// topHeader reads the message header the MTA sent.
func topHeader(h *opes.Header) *partHeader {
	ph := &partHeader{top: true}
	for _, f := range h.Fields() {
		ph.fields = append(ph.fields, hfield{name: f.Name, value: f.Value})
	}
	ph.parseBasics()
	return ph
}

// parseBasics fills mt, params and cte from the fields as they are.
func (h *partHeader) parseBasics() {
	h.mt, h.params, h.hasCT = "text/plain", nil, false
	h.cte = ""
	if i := h.index("Content-Type"); i >= 0 {
		h.hasCT = true
		mt, params := parseMedia(toUTF8(unfold(h.fields[i].value)))
		if validMediaType(mt) {
			h.mt = mt
			h.params = firstParams(params)
		}
	}
	if i := h.index("Content-Transfer-Encoding"); i >= 0 {
		h.cte = strings.ToLower(strings.TrimSpace(unfold(h.fields[i].value)))
	}
}

// index returns the first live field named name, or -1.
func (h *partHeader) index(name string) int {
	for i, f := range h.fields {
		if !f.deleted && strings.EqualFold(f.name, name) {
			return i
		}
	}
	return -1
}

func (h *partHeader) set(name, value string) {
	if i := h.index(name); i >= 0 {
		h.fields[i].value, h.fields[i].changed = value, true
		return
	}
	h.fields = append(h.fields, hfield{name: name, value: value, changed: true, added: true})
}

// headerFixer applies the header repairs to one part header.
type headerFixer struct {
	on        repairSet
	rep       *report
	delims    *delimSet
	ancestors []string // boundaries of the enclosing multiparts
	changed   func()   // called for every repair that changes the body
	// utf8ok: the message came with SMTPUTF8, where UTF-8 header text is
	// valid as it is (RFC 6532) and only other 8-bit text is repaired.
	utf8ok bool
}

// validUTF8Text is UTF-8 without control characters (folding aside).
func validUTF8Text(v string) bool {
	if !utf8.ValidString(v) {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == 0x7f || (c < 0x20 && c != '\t' && c != '\r' && c != '\n') {
			return false
		}
	}
	return true
}

func (c *headerFixer) fix(h *partHeader, name string) {
	c.rep.fix(name)
	if !h.top {
		c.changed()
	}
}

// repair applies the header repairs. message says the header starts a
// message (the top level or a message/rfc822 part), where MIME-Version
// belongs.
func (c *headerFixer) repair(h *partHeader, message bool) {
	seen := map[string]bool{}
	for i := range h.fields {
		f := &h.fields[i]
		if isTraceField(f.name) {
			continue
		}
		lname := strings.ToLower(f.name)
		if lname == "content-type" || lname == "content-transfer-encoding" || lname == "content-disposition" {
			if seen[lname] {
				if c.on.has(RepairPartHeaders) {
					f.deleted = true // readers disagree on which one counts; keep the first
					c.fix(h, RepairPartHeaders)
				}
				continue
			}
			seen[lname] = true
			if lname != "content-transfer-encoding" {
				continue // parameters are repaired below
			}
		}
		if needsEncoding(f.value) && c.on.has(RepairHeader8bit) && !(c.utf8ok && validUTF8Text(f.value)) {
			if v, problem := encodeField(f.name, f.value); problem != "" {
				c.rep.fail(problem)
			} else {
				f.value, f.changed = v, true
				c.fix(h, RepairHeader8bit)
			}
		}
		if longestLine(f.name, f.value) > maxLine && c.on.has(RepairLongLines) {
			if v, ok := refold(f.name, f.value); ok {
				f.value, f.changed = v, true
				c.fix(h, RepairLongLines)
			} else if kindOf(f.name) == kindUnstructured {
				f.value, f.changed = encodeUnstructured(f.name, f.value, true), true
				c.fix(h, RepairLongLines)
			} else {
				c.rep.fail("long-header:" + f.name)
			}
		}
	}
	c.repairContentType(h)
	if i := h.index("Content-Disposition"); i >= 0 {
		c.repairMedia(h, i, "attachment", "filename")
	}
	if i := h.index("Content-Transfer-Encoding"); i >= 0 {
		h.cte = strings.ToLower(strings.TrimSpace(unfold(h.fields[i].value)))
	}
	if message && h.hasCT && h.index("MIME-Version") < 0 && c.on.has(RepairMIMEVersion) {
		h.set("MIME-Version", "1.0")
		c.fix(h, RepairMIMEVersion)
	}
}

// repairContentType parses Content-Type, fixes its parameters and, for a
// multipart, settles the boundary: the one among the boundary parameters
// that the body really uses and no enclosing multipart uses. A multipart
// without one is read as a single text part.
func (c *headerFixer) repairContentType(h *partHeader) {
	h.mt, h.params, h.boundary, h.hasCT = "text/plain", nil, "", false
	i := h.index("Content-Type")
	if i < 0 {
		return
	}
	h.hasCT = true
	raw := h.fields[i].value
	mt, params := parseMedia(toUTF8(unfold(raw)))
	if !validMediaType(mt) {
		h.params = firstParams(params)
		if c.on.has(RepairPartHeaders) {
			h.fields[i].value, h.fields[i].changed = formatMedia("Content-Type", "text/plain", charsetOnly(h.params)), true
			c.fix(h, RepairPartHeaders)
		}
		return
	}
	h.mt = mt
	if strings.HasPrefix(mt, "multipart/") {
		var candidates []string
		for _, p := range params {
			if p.key == "boundary" && p.value != "" {
				candidates = append(candidates, p.value)
			}
		}
		for _, b := range candidates {
			if c.delims.has(b) && !slices.Contains(c.ancestors, b) {
				h.boundary = b
				break
			}
		}
		switch {
		case h.boundary == "" && c.on.has(RepairBoundaries):
			h.mt, h.params = "text/plain", nil
			h.fields[i].value, h.fields[i].changed = formatMedia("Content-Type", "text/plain", nil), true
			c.fix(h, RepairBoundaries)
			return
		case h.boundary == "":
			h.params = firstParams(params) // read as an opaque part
			return
		case len(candidates) > 1 && c.on.has(RepairBoundaries):
			var kept []param
			for _, p := range params {
				if p.key != "boundary" {
					kept = append(kept, p)
				}
			}
			params = append(kept, param{"boundary", h.boundary})
			h.fields[i].value, h.fields[i].changed = formatMedia("Content-Type", mt, firstParams(params)), true
			c.fix(h, RepairBoundaries)
		}
	}
	h.params = firstParams(params)
	c.repairMedia(h, i, "text/plain", "name")
	h.params = mergeParams(h.params, h.fields[i].value)
}

// mergeParams re-reads params after a rewrite of the field, so that later
// decisions see what is written.
func mergeParams(old map[string]string, value string) map[string]string {
	_, p := parseMedia(toUTF8(unfold(value)))
	if len(p) == 0 {
		return old
	}
	return firstParams(p)
}

// repairMedia fixes 8-bit text, an overlong line and the file name
// parameter nameParam of a Content-Type or Content-Disposition field.
func (c *headerFixer) repairMedia(h *partHeader, i int, fallback, nameParam string) {
	f := &h.fields[i]
	raw := f.value
	mt, params := parseMedia(toUTF8(unfold(raw)))
	if f.name != "" && strings.EqualFold(f.name, "Content-Disposition") {
		mt = strings.ToLower(mt)
		if !isToken(mt) {
			mt = fallback
		}
	} else if !validMediaType(mt) {
		return // handled by repairContentType
	}
	var repairs []string
	if needsEncoding(raw) && c.on.has(RepairHeader8bit) && !(c.utf8ok && validUTF8Text(raw)) {
		repairs = append(repairs, RepairHeader8bit)
	}
	pm := firstParams(params)
	if len(pm) != len(params) && c.on.has(RepairPartHeaders) {
		repairs = append(repairs, RepairPartHeaders) // duplicate parameters
	}
	if v, ok := pm[nameParam]; ok && c.on.has(RepairPartNames) {
		decoded := v
		if strings.Contains(v, "=?") {
			if d, err := new(mime.WordDecoder).DecodeHeader(v); err == nil {
				decoded = d
			}
		}
		if s := sanitizeName(decoded); s != decoded {
			pm[nameParam] = s
			repairs = append(repairs, RepairPartNames)
		}
	}
	if longestLine(f.name, raw) > maxLine && c.on.has(RepairLongLines) {
		repairs = append(repairs, RepairLongLines)
	}
	if len(repairs) == 0 {
		return
	}
	v := formatMedia(f.name, mt, pm)
	if longestLine(f.name, v) > maxLine {
		c.rep.fail("long-header:" + f.name)
		return
	}
	f.value, f.changed = v, true
	for _, r := range repairs {
		c.fix(h, r)
	}
}

func charsetOnly(p map[string]string) map[string]string {
	if cs, ok := p["charset"]; ok {
		return map[string]string{"charset": cs}
	}
	return nil
}

// param is one media type parameter, RFC 2231 continuations joined.
type param struct{ key, value string }

// firstParams keeps the first value of every parameter.
func firstParams(ps []param) map[string]string {
	m := map[string]string{}
	for _, p := range ps {
		if _, ok := m[p.key]; !ok {
			m[p.key] = p.value
		}
	}
	return m
}

// parseMedia reads "type/subtype; k=v; ..." strictly with the standard
// library and, when that fails, leniently: duplicate parameters kept in
// order, bad quoting and stray text tolerated.
func parseMedia(v string) (string, []param) {
	if mt, m, err := mime.ParseMediaType(v); err == nil {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		ps := make([]param, 0, len(keys))
		for _, k := range keys {
			ps = append(ps, param{k, m[k]})
		}
		return mt, ps
	}
	segs := splitParams(v)
	mt := strings.ToLower(strings.TrimSpace(segs[0]))
	type piece struct {
		n   int
		val string
	}
	conts := map[string][]piece{}
	var out []param
	for _, s := range segs[1:] {
		k, val, ok := strings.Cut(s, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			continue
		}
		val = unquote(strings.TrimSpace(val))
		ext := strings.HasSuffix(k, "*")
		k = strings.TrimSuffix(k, "*")
		if base, num, found := strings.Cut(k, "*"); found {
			if n, err := strconv.Atoi(num); err == nil && n < 100 {
				if ext {
					val = decode2231(val, n == 0)
				}
				conts[base] = append(conts[base], piece{n, val})
				continue
			}
		}
		if ext {
			val = decode2231(val, true)
		}
		out = append(out, param{k, val})
	}
	bases := make([]string, 0, len(conts))
	for b := range conts {
		bases = append(bases, b)
	}
	sort.Strings(bases)
	for _, b := range bases {
		ps := conts[b]
		sort.Slice(ps, func(i, j int) bool { return ps[i].n < ps[j].n })
		var sb strings.Builder
		for _, p := range ps {
			sb.WriteString(p.val)
		}
		out = append(out, param{b, sb.String()})
	}
	return mt, out
}

// splitParams splits at semicolons outside quoted strings.
func splitParams(v string) []string {
	var out []string
	quoted, esc, start := false, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case esc:
			esc = false
		case c == '\\' && quoted:
			esc = true
		case c == '"':
			quoted = !quoted
		case c == ';' && !quoted:
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

func unquote(v string) string {
	if len(v) < 2 || v[0] != '"' {
		return strings.Trim(v, `"`)
	}
	v = strings.TrimSuffix(v[1:], `"`)
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// decode2231 decodes an RFC 2231 extended value; the first segment
// carries charset'language'.
func decode2231(v string, first bool) string {
	charset := "utf-8"
	if first {
		if cs, rest, ok := strings.Cut(v, "'"); ok {
			if _, rest2, ok := strings.Cut(rest, "'"); ok {
				charset, v = strings.ToLower(cs), rest2
			}
		}
	}
	var b []byte
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if n, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(n))
				i += 2
				continue
			}
		}
		b = append(b, v[i])
	}
	if charset == "utf-8" || charset == "us-ascii" || charset == "" {
		return toUTF8(string(b))
	}
	return latin1(b)
}

func validMediaType(mt string) bool {
	t, s, ok := strings.Cut(mt, "/")
	return ok && isToken(t) && isToken(s)
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// formatMedia writes a media type with parameters, RFC 2231 for non-ASCII
// values, folded after semicolons.
func formatMedia(name, mt string, params map[string]string) string {
	clean := map[string]string{}
	for k, v := range params {
		if !isToken(k) {
			continue
		}
		clean[k] = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f || r == utf8.RuneError {
				return -1
			}
			return r
		}, v)
	}
	s := mime.FormatMediaType(mt, clean)
	if s == "" {
		s = mt
	}
	return fold(strings.SplitAfter(s, ";"), len(name), true)
}

// fold joins pieces with a space, breaking lines before 78 columns where
// it can; splitAfter says the pieces already end with their separator and
// the following space is theirs to drop.
func fold(pieces []string, nameLen int, splitAfter bool) string {
	var b strings.Builder
	col := nameLen + 2
	for i, p := range pieces {
		if splitAfter {
			p = strings.TrimLeft(p, " ")
		}
		if i > 0 {
			if col+1+len(p) > 78 {
				b.WriteString("\r\n ")
				col = 1
			} else {
				b.WriteByte(' ')
				col++
			}
		}
		b.WriteString(p)
		col += len(p)
	}
	return b.String()
}

// unfold removes folding line breaks and surrounding white space.
func unfold(v string) string {
	v = strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v)
	return strings.TrimSpace(v)
}

// needsEncoding reports raw 8-bit or control octets (folding aside).
func needsEncoding(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 0x80 || c == 0x7f || (c < 0x20 && c != '\t' && c != '\r' && c != '\n') {
			return true
		}
	}
	return false
}

// longestLine is the longest physical line the field takes, CRLF
// excluded.
func longestLine(name, value string) int {
	longest, cur := 0, len(name)+1
	for i := 0; i < len(value); i++ {
		if value[i] == '\n' || value[i] == '\r' {
			longest, cur = max(longest, cur), 0
			continue
		}
		cur++
	}
	return max(longest, cur)
}

// refold breaks lines longer than maxLine at white space.
func refold(name, value string) (string, bool) {
	words := strings.Fields(strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(value))
	for _, w := range words {
		if len(w) > maxLine-1-len(name)-1 {
			return "", false
		}
	}
	return fold(words, len(name), false), true
}

// toUTF8 returns v when it is valid UTF-8 and reads it as Latin-1
// otherwise (the usual charset of raw 8-bit header text that is not
// UTF-8).
func toUTF8(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	return latin1([]byte(v))
}

func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// Field kinds for RFC 2047: where encoded-words may stand.
type fieldKind uint8

const (
	kindUnstructured fieldKind = iota // the whole text (RFC 2047 §5(1))
	kindAddress                       // display names only (§5(3))
	kindOpaque                        // structured: no encoded-words allowed
)

var addressFields = []string{
	"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender",
	"resent-to", "resent-cc", "resent-bcc", "disposition-notification-to",
	"return-receipt-to", "mail-followup-to", "mail-reply-to", "errors-to",
}

var opaqueFields = []string{
	"received", "return-path", "message-id", "in-reply-to", "references", "date",
	"resent-date", "resent-message-id", "dkim-signature", "domainkey-signature",
	"arc-seal", "arc-message-signature", "arc-authentication-results",
	"authentication-results", "received-spf", "content-id", "content-md5",
	"mime-version", "content-transfer-encoding", "autocrypt", "content-location",
	"content-language", "content-base",
}

func kindOf(name string) fieldKind {
	n := strings.ToLower(name)
	switch {
	case slices.Contains(addressFields, n):
		return kindAddress
	case slices.Contains(opaqueFields, n), strings.HasPrefix(n, "list-"), strings.HasPrefix(n, "opes-"):
		return kindOpaque
	}
	return kindUnstructured
}

// encodeField turns raw 8-bit text into encoded-words where RFC 2047
// allows them; problem says why it could not.
func encodeField(name, value string) (string, string) {
	switch kindOf(name) {
	case kindUnstructured:
		return encodeUnstructured(name, value, false), ""
	case kindAddress:
		return encodeAddresses(name, value)
	}
	return "", "8bit-header:" + name
}

// encodeUnstructured encodes the runs of words that need it and keeps
// the others as they are; spaces inside a run are encoded with it, so the
// decoded text is the original. force encodes overlong words too.
func encodeUnstructured(name, value string, force bool) string {
	s := toUTF8(unfold(value))
	tokens := strings.Split(s, " ")
	needs := func(t string) bool { return needsEncoding(t) || len(t) > 900 || (force && len(t) > 76) }
	var pieces []string
	for i := 0; i < len(tokens); {
		if !needs(tokens[i]) {
			pieces = append(pieces, tokens[i])
			i++
			continue
		}
		j := i + 1
		for j < len(tokens) {
			k := j
			for k < len(tokens) && tokens[k] == "" {
				k++
			}
			if k < len(tokens) && needs(tokens[k]) {
				j = k + 1
				continue
			}
			break
		}
		pieces = append(pieces, encodeWords(strings.Join(tokens[i:j], " "))...)
		i = j
	}
	return fold(pieces, len(name), false)
}

// encodeWords encodes s (UTF-8) as encoded-words of at most 75 octets,
// split at character boundaries: Q for mostly ASCII text, B otherwise.
// Q keeps to the characters allowed in a phrase (RFC 2047 §5(3)).
func encodeWords(s string) []string {
	high := 0
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			high++
		}
	}
	const prefixQ, prefixB, suffix = "=?utf-8?q?", "=?utf-8?b?", "?="
	var words []string
	if high*2 > len(s) {
		room := (75 - len(prefixB) - len(suffix)) / 4 * 3 // raw octets per word
		for len(s) > 0 {
			n := min(room, len(s))
			for n < len(s) && n > 0 && !utf8.RuneStart(s[n]) {
				n--
			}
			words = append(words, prefixB+base64.StdEncoding.EncodeToString([]byte(s[:n]))+suffix)
			s = s[n:]
		}
		return words
	}
	var cur strings.Builder
	flush := func() {
		if cur.Len() > 0 {
			words = append(words, prefixQ+cur.String()+suffix)
			cur.Reset()
		}
	}
	for len(s) > 0 {
		_, size := utf8.DecodeRuneInString(s)
		var enc strings.Builder
		for _, c := range []byte(s[:size]) {
			switch {
			case c == ' ':
				enc.WriteByte('_')
			case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!*+-/", c) >= 0:
				enc.WriteByte(c)
			default:
				fmt.Fprintf(&enc, "=%02X", c)
			}
		}
		if cur.Len()+enc.Len() > 75-len(prefixQ)-len(suffix) {
			flush()
		}
		cur.WriteString(enc.String())
		s = s[size:]
	}
	flush()
	return words
}

// encodeAddresses re-writes an address list with encoded display names.
// Addresses themselves cannot be encoded (RFC 2047 §5): non-ASCII there
// needs SMTPUTF8 and is left alone.
func encodeAddresses(name, value string) (string, string) {
	list, err := mail.ParseAddressList(toUTF8(unfold(value)))
	if err != nil || len(list) == 0 {
		return "", "8bit-header:" + name
	}
	var pieces []string
	for i, a := range list {
		if needsEncoding(a.Address) {
			return "", "8bit-address:" + name
		}
		s := a.String()
		if i < len(list)-1 {
			s += ","
		}
		pieces = append(pieces, s)
	}
	v := fold(pieces, len(name), false)
	if needsEncoding(v) || longestLine(name, v) > maxLine {
		return "", "8bit-header:" + name
	}
	return v, ""
}

// Attachment names: what a name may look like after sanitising.
const maxNameLen = 200 // octets

// sanitizeName makes a file name safe to save: no control characters,
// no path separators, no names made only of dots, at most maxNameLen
// octets with the extension kept.
func sanitizeName(s string) string {
	s = toUTF8(s)
	s = strings.Map(func(r rune) rune {
		switch {
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError:
			return -1
		case r == '/' || r == '\\' || r == ':':
			return '_'
		}
		return r
	}, s)
	s = strings.TrimRight(strings.TrimSpace(s), ". ")
	if strings.Trim(s, ".") == "" {
		return "attachment"
	}
	if len(s) > maxNameLen {
		ext := ""
		if i := strings.LastIndexByte(s, '.'); i > 0 && len(s)-i <= 16 {
			ext = s[i:]
		}
		base := s[:maxNameLen-len(ext)]
		for len(base) > 0 && !utf8.ValidString(base) {
			base = base[:len(base)-1]
		}
		s = base + ext
	}
	return s
}

// applyTop turns the repaired message header into changes of tx.Header,
// field by field at its place (opes.Header.SetAt, DelAt); added fields
// go to the end. Trace fields are never repaired.
func applyTop(h *opes.Header, top *partHeader) error {
	if top == nil {
		return nil
	}
	cur := map[string]int{} // occurrences of each name kept so far
	for _, f := range top.fields {
		if f.added || isTraceField(f.name) {
			continue
		}
		k := strings.ToLower(f.name)
		switch {
		case f.deleted:
			if _, err := h.DelAt(f.name, cur[k]+1); err != nil {
				return fmt.Errorf("delete %s: %w", f.name, err)
			}
			continue
		case f.changed:
			if _, err := h.SetAt(f.name, cur[k]+1, f.value); err != nil {
				return fmt.Errorf("set %s: %w", f.name, err)
			}
		}
		cur[k]++
	}
	for _, f := range top.fields {
		if f.added && !isTraceField(f.name) {
			if err := h.Add(f.name, f.value); err != nil {
				return fmt.Errorf("add %s: %w", f.name, err)
			}
		}
	}
	return nil
}
