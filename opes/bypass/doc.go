// Package bypass reads OPES bypass requests (RFC 3897 §4, RFC 4236 §5
// syntax, PROFILE §5) and tells which services they name; it decides
// nothing.
//
// A request arrives in the message as OPES-Bypass fields (ParseField,
// Collect: the union of all fields, malformed ones skipped and counted) or
// in the SMTP dialog as the MAIL/RCPT parameter X-OPES-BYPASS=<xtext>
// (ParseParam: any error is a 501 5.5.4). Either way the result is a
// Request: "*" or a bounded set of absolute URIs in RFC 3986 normal form
// (NormalizeURI), so that matching is string comparison. A Matcher, built
// once per policy, says whether a Request covers a service: "*", the
// service's URI, the system URI (all its services), or — RFC 3897 §4.3,
// switchable — a URI naming nothing known here, which counts as "*".
// SignedBy verifies DKIM signatures and returns the domains whose
// signatures vouch for every OPES-Bypass field of a message.
//
// Trust is the caller's job. "Covered" only means "asked for": the
// processor honours a request for a service only if the service is
// bypassable, is not required for delivery (no non-OPES version exists
// otherwise, RFC 3897 §4: deliver the OPES version), and the request comes
// from a source the policy trusts — an SMTP AUTH session, a recipient's
// out-of-band entry, a trusted network, or a DKIM signature from SignedBy
// by a domain the policy accepts (RFC 3835 §3.2: in-band requests MUST be
// authenticated). Anyone can write an OPES-Bypass field, so an
// unauthenticated request must never switch a service off; and an
// in-message request reaches only services at DATA and later. The
// processor traces each decision (bypass=honored|refused; reason=...) and
// leaves the fields in the message for downstream systems.
//
// Every input is bounded (MaxFieldBytes, MaxFieldEntries, MaxURIs,
// MaxURILen, MaxParamXtext, MaxSignatures, MaxHeaderBytes) and every
// malformed input gets an error; none makes mail fail by itself.
package bypass
