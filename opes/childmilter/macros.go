package childmilter

import (
	"strconv"
	"strings"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/opes"
)

// macroStages lists, per milter macro stage, the macros the processor
// knows and sends when the child does not ask for its own lists: the
// stage at which an MTA (Postfix's milter_*_macros defaults) first knows
// each value.
var macroStages = [milter.StageEndMarker][]string{
	milter.StageConnect: {milter.MacroMTAFQDN, milter.MacroDaemonName, milter.MacroClientAddr, milter.MacroClientPort, milter.MacroClientName},
	milter.StageHelo:    {milter.MacroTlsVersion, milter.MacroCipher, milter.MacroCertSubject},
	milter.StageMail:    {milter.MacroAuthType, milter.MacroAuthAuthen, milter.MacroMailAddr, milter.MacroQueueId},
	milter.StageRcpt:    {milter.MacroRcptAddr, milter.MacroQueueId},
	milter.StageData:    {milter.MacroQueueId},
	milter.StageEOH:     {milter.MacroQueueId},
	milter.StageEOM:     {milter.MacroQueueId},
}

// knownMacroNames lists every macro the processor can fill, in
// canonical form, without duplicates.
func knownMacroNames() []string {
	var out []string
	seen := map[string]bool{}
	for _, names := range macroStages {
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// canonicalMacro accepts a macro name with or without braces ("i", "{i}",
// "auth_authen", "{auth_authen}") and returns the form milters use on the
// wire: bare for one character, braced otherwise.
func canonicalMacro(name string) (string, bool) {
	n := strings.TrimSpace(name)
	n = strings.TrimSuffix(strings.TrimPrefix(n, "{"), "}")
	if len(n) != 1 {
		n = "{" + n + "}"
	}
	for _, k := range knownMacroNames() {
		if k == n {
			return n, true
		}
	}
	return "", false
}

// txMacros answers the child's macro requests from the transaction at the
// moment they are sent, so values the bridge learns late (the queue id)
// are current. Only configured macros with a value are sent, as an MTA
// sends no undefined macro.
type txMacros struct {
	allowed map[string]bool
	tx      *opes.Transaction
	rcpt    *opes.Recipient // the recipient being sent, for {rcpt_addr}
}

func (m *txMacros) Get(name string) string {
	v, _ := m.GetEx(name)
	return v
}

func (m *txMacros) GetEx(name string) (string, bool) {
	c, ok := canonicalMacro(name)
	if !ok || !m.allowed[c] {
		return "", false
	}
	v := m.value(c)
	// The milter protocol frames values as C strings.
	if v == "" || strings.IndexByte(v, 0) >= 0 {
		return "", false
	}
	return v, true
}

func (m *txMacros) value(name string) string {
	c := m.tx.Conn
	if c == nil {
		c = &opes.Connection{}
	}
	switch name {
	case milter.MacroMTAFQDN:
		return c.MTAName
	case milter.MacroDaemonName:
		return c.DaemonName
	case milter.MacroClientAddr:
		if c.Addr.IsValid() {
			return c.Addr.String()
		}
	case milter.MacroClientPort:
		if c.Addr.IsValid() {
			return strconv.Itoa(int(c.Port))
		}
	case milter.MacroClientName:
		return c.Hostname
	case milter.MacroTlsVersion:
		return c.TLSVersion
	case milter.MacroCipher:
		return c.Cipher
	case milter.MacroCertSubject:
		return c.CertSubject
	case milter.MacroAuthType:
		return c.AuthType
	case milter.MacroAuthAuthen:
		return c.AuthUser
	case milter.MacroMailAddr:
		if m.tx.Sender != nil {
			return m.tx.Sender.Addr
		}
	case milter.MacroRcptAddr:
		if m.rcpt != nil {
			return m.rcpt.Addr
		}
	case milter.MacroQueueId:
		return m.tx.QueueID
	}
	return ""
}
