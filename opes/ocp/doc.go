// Package ocp implements OCP Core, the OPES callout protocol of RFC 4037,
// and the OSMTP profile opes-milter speaks over it (PROFILE §7).
//
// The codec (Message, Reader, Message.Append) covers the whole message
// syntax of §3.1: names, anonymous and named parameters, structures,
// lists, bare and size-prefixed quoted atoms, and the payload. The
// decoder streams: it reads through a buffer and checks every bound in
// Limits (message size, nesting depth, values per element) before it
// allocates, since Core sets none and §13 names that as an attack. Any
// violation is a *SyntaxError, after which the connection must end
// (§5). Atoms hold decoded octets; the encoder writes them bare when the
// grammar allows, so the output is canonical.
//
// The agents are Client (the OPES processor: CS then NO at once,
// service groups, group-scoped negotiation, transactions multiplexed by
// xid, PQ/PA keep-alive, AQ/AA) and ServeConn with a ConnHandler (the
// callout server: one goroutine per transaction, bounded transactions
// and groups, idle timeout). Both enforce what §5, §10.2 and §13 demand:
// the first message is CS; ids are local to the connection and
// increase; messages of the other agent's role, unknown ids and
// undecodable input end the connection with CE 400; an NR must select an
// offered feature and echo SG; valid but unknown messages and parameters
// are ignored; an unknown result code counts as 400. Messages that cross
// our own TE on the wire are dropped, not treated as unknown ids.
//
// The OSMTP profile (osmtp.go) defines the feature ProfileReceiver with
// Adaptive-Parts (parts the callout answers) and Informative-Parts
// (parts it only reads); the server may narrow both, never widen them.
// Parts are CONNECT, HELO, MAIL, RCPT, HEADERS, SIZE and BODY, in that
// order, each DUM carrying AM-Part. The callout answers an adaptive part
// with DUY (unchanged, referring to data the processor announced as
// Kept) or DUM (a new MAIL/RCPT value, or an SMTP-Error with an empty
// payload), and the whole message on its AME: SMTP-Error, Advice,
// Reason, Reply-Text, Action, Status, Add-Header, Prepend-Header (our
// extension: fields for the top of the header, top first), Change-Header,
// Delete-Header and OPES-Via; changed MAIL, RCPT (Rcpt-Op add|delete)
// and BODY travel as DUMs just before that AME.
//
// Deviations from the RFC's own text, all in favour of its ABNF (spec
// digest §5.11):
//   - "Kept: org-offset org-size" (§11.9) has two values where the ABNF's
//     named-value allows one; the codec reads and writes SP-separated
//     extra values for named parameters (Param.Values).
//   - Examples with wrong size prefixes (§3.3 "32:" and §10.13 "41:" for
//     a 44-octet URI, §6.2 "31:" for 30 octets), "CSE" for CE and spaces
//     inside braces (§6.2, §10.10) are rejected as written; the tests use
//     corrected forms.
//   - "Size-Request" (§3.3) versus "Size-request" (§11.17): names are
//     case-sensitive, the agents send neither (no DWM from the processor).
//   - Appendix B's PQ/PA for "ability inquiry" is AQ/AA; xids are unique
//     per connection (§10.7), not per transaction (§10.2's wording).
package ocp
