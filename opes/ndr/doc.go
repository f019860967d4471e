// Package ndr sends the non-delivery reports opes-milter owes for mail it
// accepted and then did not deliver to some recipients (RFC 4902 §4,
// PROFILE §4): a split verdict applied with delrcpt, a discard, an
// unreleased quarantine that expired. Once the MTA answered 250 the mail
// is ours, and SMTP (RFC 5321 §6.1) makes the report mandatory; RFC 4902
// adds that it must name the OPES system, the service that decided and
// how to reach the policy and bypass options.
//
// The package has three parts, each usable on its own:
//
//   - [Needed] and [Build] decide who gets a report (RFC 3461 NOTIFY, the
//     null reverse-path) and write it: an RFC 3464 multipart/report with
//     a human part, a message/delivery-status part carrying the OPES trace
//     as X- extension fields, and the processed header as
//     text/rfc822-headers. Every value that came from the wire is
//     sanitised there, so no address or reason can inject a field or a
//     MIME part.
//   - [Relay] submits a report to the MTA over SMTP with MAIL FROM:<> and
//     tells permanent refusals ([IsPermanent]) from temporary trouble.
//   - [Worker] puts reports in a durable outbox before the caller lets the
//     mail's fate be final, and drains the outbox with retries and
//     exponential back-off, so a report is never lost while the relay is
//     down. A report the relay refuses permanently is the double-bounce
//     case: nothing more is sent, the item is kept as failed for the admin.
package ndr
