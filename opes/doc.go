// Package opes is the OPES processor for SMTP: it keeps the state of one
// SMTP transaction, runs the services the policy selects at each stage,
// combines their verdicts, generates the OPES trace (RFC 3897, in the
// formats of the project's profile) and formats SMTP replies that carry the
// trace.
//
// The package knows nothing about the milter protocol: the bridge in
// package milter turns MTA callbacks into calls on a [Session] and applies
// the resulting [Outcome]. Services implement [Service] and never see the
// wire either.
package opes
