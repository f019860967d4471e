package ocp

import (
	"fmt"
	"slices"
	"strconv"
)

// OSMTP is our OCP/SMTP profile (namespace tag OSMTP; PROFILE §7, spec
// digest §9.7), derived from draft-ietf-opes-smtp-00 §3. Nothing of it is
// registered with IANA, so the feature URI lives under the project's own
// name.
const (
	// ProfileReceiver is the feature URI: the processor is receiving (or
	// has just received) the message over SMTP.
	ProfileReceiver = "https://github.com/opesmilter/opes-milter/ns/ocp/smtp/receiver"
)

// Application-message parts, in SMTP order. DATA, RSET and QUIT are never
// parts (draft §3.2).
const (
	PartConnect = "CONNECT" // client address, name, TLS and AUTH facts (named parameters)
	PartHelo    = "HELO"    // HELO/EHLO argument
	PartMail    = "MAIL"    // reverse-path without brackets; ESMTP parameters in ESMTP
	PartRcpt    = "RCPT"    // one forward-path per DUM
	PartHeaders = "HEADERS" // the header block as RFC 5322 text, empty line included
	PartBody    = "BODY"    // the body, in chunks
	PartSize    = "SIZE"    // message size in octets (decimal payload), RFC 4496 §4.3
)

// Parts lists every part in the order they travel.
var Parts = []string{PartConnect, PartHelo, PartMail, PartRcpt, PartHeaders, PartSize, PartBody}

// Parameter names of the profile.
const (
	ParamAdaptive    = "Adaptive-Parts"    // feature: parts the callout answers (and may change)
	ParamInformative = "Informative-Parts" // feature: parts the callout only reads
	ParamAllow       = "Allow"             // AMS from the processor: answers it accepts
	ParamAMPart      = "AM-Part"           // on every DUM (and DUY) of the profile
	ParamKept        = "Kept"
	ParamSMTPError   = "SMTP-Error" // proposed reply "ddd x.y.z text"; never on DUY
	ParamAdvice      = "Advice"     // AdviceXxx
	ParamReason      = "Reason"     // short text for logs and quarantine
	ParamReplyText   = "Reply-Text" // human reply text for Advice reject or tempfail
	ParamAction      = "Action"     // trace action token (PROFILE §2)
	ParamStatus      = "Status"     // trace status token
	ParamAddHeader   = "Add-Header" // list of "Name: value"
	// ParamPrependHeader lists "Name: value" fields to put at the top of
	// the header (below the processor's trace), top first: an extension
	// of the profile for fields such as Authentication-Results.
	ParamPrependHeader = "Prepend-Header"
	ParamChgHeader     = "Change-Header" // list of {name index value}
	ParamDelHeader     = "Delete-Header" // list of {name index}
	ParamRcptOp        = "Rcpt-Op"       // on an adapted RCPT after AME: add | delete
	ParamVia           = "OPES-Via"      // on AME: trace entries of the callout's agents
	ParamESMTP         = "ESMTP"         // on MAIL/RCPT: list of ESMTP parameters
	ParamRefused       = "Refused"       // on RCPT: refused at RCPT by the processor
)

// Advice values.
const (
	AdviceContinue   = "continue"
	AdviceAccept     = "accept"
	AdviceReject     = "reject" // refuse with the processor's default reply for the stage
	AdviceDiscard    = "discard"
	AdviceQuarantine = "quarantine"
	AdviceTempfail   = "tempfail"
)

// Allowed lists the answers a processor accepts (draft §3.4 Allow).
var Allowed = List{Atom(ParamSMTPError), Atom(ParamAdvice), Atom(ParamAddHeader), Atom(ParamPrependHeader), Atom(ParamChgHeader), Atom(ParamDelHeader)}

// Profile is the negotiated content of the OSMTP feature.
type Profile struct {
	Adaptive    []string // parts the callout answers, each with a decision
	Informative []string // parts the callout only reads
}

// Feature renders the profile as a feature structure for NO and NR.
func (p Profile) Feature() Value {
	return &Struct{
		Anon: []Value{Atom(ProfileReceiver)},
		Named: []Param{
			{Name: ParamAdaptive, Values: []Value{partList(p.Adaptive)}},
			{Name: ParamInformative, Values: []Value{partList(p.Informative)}},
		},
	}
}

// Sends reports whether part travels at all.
func (p Profile) Sends(part string) bool {
	return slices.Contains(p.Adaptive, part) || slices.Contains(p.Informative, part)
}

// Answers reports whether the callout answers part.
func (p Profile) Answers(part string) bool { return slices.Contains(p.Adaptive, part) }

func partList(parts []string) List {
	l := List{}
	for _, p := range Parts { // canonical order
		if slices.Contains(parts, p) {
			l = append(l, Atom(p))
		}
	}
	return l
}

// ParseProfile reads an OSMTP feature. Unknown part atoms are ignored
// (draft §3.2); a part listed both ways counts as adaptive.
func ParseProfile(v Value) (Profile, error) {
	uri, err := featureURI(v)
	if err != nil {
		return Profile{}, err
	}
	if uri != ProfileReceiver {
		return Profile{}, fmt.Errorf("ocp: feature %q is not the OSMTP profile", truncate(uri))
	}
	s := v.(*Struct)
	var p Profile
	for _, k := range []struct {
		name string
		dst  *[]string
	}{{ParamAdaptive, &p.Adaptive}, {ParamInformative, &p.Informative}} {
		l, err := ListOf(s.Param(k.name))
		if err != nil {
			return Profile{}, fmt.Errorf("ocp: %s: %w", k.name, err)
		}
		for _, item := range l {
			a, err := AtomOf(item)
			if err != nil {
				return Profile{}, fmt.Errorf("ocp: %s: %w", k.name, err)
			}
			if slices.Contains(Parts, string(a)) && !slices.Contains(*k.dst, string(a)) {
				*k.dst = append(*k.dst, string(a))
			}
		}
	}
	p.Informative = slices.DeleteFunc(p.Informative, func(s string) bool { return slices.Contains(p.Adaptive, s) })
	return p, nil
}

// Narrow is what a callout server answers to an offer: the offered parts
// it wants, adaptive only where it was offered adaptive.
func Narrow(offer Profile, wantAdaptive, wantRead []string) Profile {
	var p Profile
	for _, part := range Parts {
		switch {
		case slices.Contains(wantAdaptive, part) && offer.Answers(part):
			p.Adaptive = append(p.Adaptive, part)
		case (slices.Contains(wantAdaptive, part) || slices.Contains(wantRead, part)) && offer.Sends(part):
			p.Informative = append(p.Informative, part)
		}
	}
	return p
}

// CheckNarrowed verifies that a server's answer only narrows the offer
// (draft §3.4: the processor closes the connection otherwise).
func CheckNarrowed(offer, got Profile) error {
	for _, part := range got.Adaptive {
		if !offer.Answers(part) {
			return fmt.Errorf("ocp: server made part %s adaptive, which was not offered so", part)
		}
	}
	for _, part := range got.Informative {
		if !offer.Sends(part) {
			return fmt.Errorf("ocp: server asked for part %s, which was not offered", part)
		}
	}
	return nil
}

// HeaderEdit is a change of the n-th (1-based) field of a name; Value is
// unused for deletions.
type HeaderEdit struct {
	Name  string
	Index int
	Value string
}

// Decision is the callout's answer to one adaptive part or, on AME, to
// the whole message.
type Decision struct {
	SMTPError string // "ddd x.y.z text", validated by the processor
	Advice    string
	Reason    string
	ReplyText string
	Action    string
	Status    string
	AddHeader []string // "Name: value" (AME only)
	// PrependHeader: "Name: value" fields for the top, top first (AME only).
	PrependHeader []string
	Change        []HeaderEdit
	Delete        []HeaderEdit
	Via           []string // trace entries (AME only)
}

// Empty reports whether the decision says nothing.
func (d *Decision) Empty() bool {
	return d.SMTPError == "" && d.Advice == "" && d.Reason == "" && d.ReplyText == "" && d.Action == "" && d.Status == "" &&
		len(d.AddHeader) == 0 && len(d.PrependHeader) == 0 && len(d.Change) == 0 && len(d.Delete) == 0 && len(d.Via) == 0
}

// AddTo appends the decision's parameters to m.
func (d *Decision) AddTo(m *Message) *Message {
	for _, kv := range [][2]string{{ParamSMTPError, d.SMTPError}, {ParamAdvice, d.Advice}, {ParamReason, d.Reason}, {ParamReplyText, d.ReplyText}, {ParamAction, d.Action}, {ParamStatus, d.Status}} {
		if kv[1] != "" {
			m.With(kv[0], Atom(kv[1]))
		}
	}
	if len(d.AddHeader) > 0 {
		m.With(ParamAddHeader, atoms(d.AddHeader))
	}
	if len(d.PrependHeader) > 0 {
		m.With(ParamPrependHeader, atoms(d.PrependHeader))
	}
	if len(d.Change) > 0 {
		l := List{}
		for _, e := range d.Change {
			l = append(l, &Struct{Anon: []Value{Atom(e.Name), Atom(strconv.Itoa(e.Index)), Atom(e.Value)}})
		}
		m.With(ParamChgHeader, l)
	}
	if len(d.Delete) > 0 {
		l := List{}
		for _, e := range d.Delete {
			l = append(l, &Struct{Anon: []Value{Atom(e.Name), Atom(strconv.Itoa(e.Index))}})
		}
		m.With(ParamDelHeader, l)
	}
	if len(d.Via) > 0 {
		m.With(ParamVia, atoms(d.Via))
	}
	return m
}

func atoms(ss []string) List {
	l := make(List, len(ss))
	for i, s := range ss {
		l[i] = Atom(s)
	}
	return l
}

// ParseDecision reads the decision parameters of m. It checks types and
// shapes; what the values mean is the processor's to validate.
func ParseDecision(m *Message) (*Decision, error) {
	d := &Decision{}
	for _, kv := range []struct {
		name string
		dst  *string
	}{{ParamSMTPError, &d.SMTPError}, {ParamAdvice, &d.Advice}, {ParamReason, &d.Reason}, {ParamReplyText, &d.ReplyText}, {ParamAction, &d.Action}, {ParamStatus, &d.Status}} {
		if v := m.Param(kv.name); v != nil {
			a, err := AtomOf(v)
			if err != nil {
				return nil, fmt.Errorf("ocp: %s: %w", kv.name, err)
			}
			*kv.dst = string(a)
		}
	}
	var err error
	if d.AddHeader, err = atomList(m, ParamAddHeader); err != nil {
		return nil, err
	}
	if d.PrependHeader, err = atomList(m, ParamPrependHeader); err != nil {
		return nil, err
	}
	if d.Via, err = atomList(m, ParamVia); err != nil {
		return nil, err
	}
	for _, k := range []struct {
		name  string
		dst   *[]HeaderEdit
		value bool
	}{{ParamChgHeader, &d.Change, true}, {ParamDelHeader, &d.Delete, false}} {
		l, err := ListOf(m.Param(k.name))
		if err != nil {
			return nil, fmt.Errorf("ocp: %s: %w", k.name, err)
		}
		for _, item := range l {
			s, err := StructOf(item)
			if err != nil {
				return nil, fmt.Errorf("ocp: %s: %w", k.name, err)
			}
			want := 2
			if k.value {
				want = 3
			}
			if len(s.Anon) < want {
				return nil, fmt.Errorf("ocp: %s: %w: want %d members", k.name, ErrMissing, want)
			}
			name, err := AtomOf(s.Anon[0])
			if err != nil {
				return nil, fmt.Errorf("ocp: %s name: %w", k.name, err)
			}
			idx, err := Uni(s.Anon[1])
			if err != nil || idx == 0 {
				return nil, fmt.Errorf("ocp: %s index: %w", k.name, ErrType)
			}
			e := HeaderEdit{Name: string(name), Index: int(idx)}
			if k.value {
				v, err := AtomOf(s.Anon[2])
				if err != nil {
					return nil, fmt.Errorf("ocp: %s value: %w", k.name, err)
				}
				e.Value = string(v)
			}
			*k.dst = append(*k.dst, e)
		}
	}
	return d, nil
}

// atomList reads a parameter that is a list of atoms; a single atom is
// accepted as a list of one (the draft's Add-Header is one atom).
func atomList(m *Message, name string) ([]string, error) {
	v := m.Param(name)
	if a, ok := v.(Atom); ok {
		return []string{string(a)}, nil
	}
	l, err := ListOf(v)
	if err != nil {
		return nil, fmt.Errorf("ocp: %s: %w", name, err)
	}
	var out []string
	for _, item := range l {
		a, err := AtomOf(item)
		if err != nil {
			return nil, fmt.Errorf("ocp: %s: %w", name, err)
		}
		out = append(out, string(a))
	}
	return out, nil
}

// PartOf returns the AM-Part of a data message.
func PartOf(m *Message) (string, error) {
	a, err := AtomOf(m.Param(ParamAMPart))
	if err != nil {
		return "", fmt.Errorf("ocp: %s without %s: %w", m.Name, ParamAMPart, err)
	}
	return string(a), nil
}
