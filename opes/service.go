package opes

import (
	"context"
	"time"
)

// Service is the implementation of one configured OPES service. One value
// serves every transaction; per-message state lives in the ServiceTx it
// starts. Implementations know nothing of the milter protocol: they read
// the Transaction and return verdicts; the processor applies them.
type Service interface {
	// Needs says which stages the service acts at and what message data it
	// reads, so the milter asks the MTA for no more than that.
	Needs() Needs
	// Begin starts the service's work on one transaction.
	Begin(tx *Transaction) ServiceTx
}

// Needs describes what a service (or the whole policy) needs from the MTA.
type Needs struct {
	Stages  StageSet // hooks that do work
	Headers bool     // reads header fields
	Body    bool     // reads the body
}

// Union returns the needs of both.
func (n Needs) Union(o Needs) Needs {
	return Needs{Stages: n.Stages | o.Stages, Headers: n.Headers || o.Headers, Body: n.Body || o.Body}
}

// ServiceTx is a service's state for one transaction, with one hook per
// stage. Hooks run only for stages listed in Needs; embed BaseTx to get
// "continue" for the others. A returned error is handled by the service's
// on_error policy.
type ServiceTx interface {
	Connect(ctx context.Context) (Verdict, error)
	Helo(ctx context.Context) (Verdict, error)
	Mail(ctx context.Context) (Verdict, error)
	Rcpt(ctx context.Context, rcpt *Recipient) (Verdict, error)
	Data(ctx context.Context) (Verdict, error)
	Headers(ctx context.Context) (Verdict, error)
	// EndOfMessage may change the header, body and envelope through the
	// Transaction.
	EndOfMessage(ctx context.Context) (Verdict, error)
	// Close releases per-transaction resources; it is always called.
	Close()
}

// Tracer is implemented by a ServiceTx whose service invoked agents of its
// own, such as the services of a callout server (RFC 3897 §3.4).
// TraceEntries returns the entries collected since the last call; the
// processor checks them and lists them in OPES-Via after the service's
// entry. An entry naming this OPES system is dropped: only the processor
// speaks for it.
type Tracer interface {
	TraceEntries() []TraceEntry
}

// Prefetcher is implemented by a ServiceTx whose hook mostly waits for a
// remote server (a callout). When two or more enabled services of a stage
// are Prefetchers, the processor calls Prefetch on all of them at once,
// then runs the stage's hooks in policy order as always; the hook uses
// what Prefetch fetched. Prefetch must not change the transaction, so the
// services are independent: each sees the message as it was before the
// stage, and their verdicts and changes apply in policy order (the first
// refusal wins), exactly as if they had run one after the other on the
// unchanged message.
type Prefetcher interface {
	Prefetch(ctx context.Context, st Stage, rcpt *Recipient)
}

// BaseTx answers "continue" at every stage. Embed it in a ServiceTx.
type BaseTx struct{}

func (BaseTx) Connect(context.Context) (Verdict, error)          { return ContinueVerdict, nil }
func (BaseTx) Helo(context.Context) (Verdict, error)             { return ContinueVerdict, nil }
func (BaseTx) Mail(context.Context) (Verdict, error)             { return ContinueVerdict, nil }
func (BaseTx) Rcpt(context.Context, *Recipient) (Verdict, error) { return ContinueVerdict, nil }
func (BaseTx) Data(context.Context) (Verdict, error)             { return ContinueVerdict, nil }
func (BaseTx) Headers(context.Context) (Verdict, error)          { return ContinueVerdict, nil }
func (BaseTx) EndOfMessage(context.Context) (Verdict, error)     { return ContinueVerdict, nil }
func (BaseTx) Close()                                            {}

// OnError is what a service failure (a hook error or panic) does.
type OnError uint8

// Failure policies. OnErrorDefault resolves to TempFail for services that
// are required for delivery or not bypassable, and to Continue otherwise.
const (
	OnErrorDefault OnError = iota
	OnErrorTempFail
	OnErrorContinue
	OnErrorReject
)

// ServiceSpec is a configured service instance: the policy attributes
// around an implementation.
type ServiceSpec struct {
	Name       string
	Kind       string
	URI        string // absolute; default <system-uri>svc/<name>
	Bypassable bool
	// ModifySigned lets the service replace the body of a signed or
	// encrypted message (PROFILE §6: by default such content is not
	// modified, and the trace says status=skipped; reason=signed).
	ModifySigned        bool
	RequiredForDelivery bool
	OnError             OnError
	Impl                Service
}

func (s *ServiceSpec) onError() OnError {
	if s.OnError != OnErrorDefault {
		return s.OnError
	}
	if s.RequiredForDelivery || !s.Bypassable {
		return OnErrorTempFail
	}
	return OnErrorContinue
}

// RetireAfter is how long the services of a replaced policy keep their
// resources: longer than the MTA's end-of-message milter timeout, so that
// transactions that started with them finish.
const RetireAfter = 6 * time.Minute

// Retire closes, after d, the services of a replaced policy that hold
// resources (the connection pools of callout and ICAP services: those
// with a Close method). It returns how many will be closed.
func Retire(services []*ServiceSpec, d time.Duration) int {
	type closer interface{ Close() }
	var closers []closer
	for _, s := range services {
		if c, ok := s.Impl.(closer); ok {
			closers = append(closers, c)
		}
	}
	if len(closers) > 0 {
		time.AfterFunc(d, func() {
			for _, c := range closers {
				c.Close()
			}
		})
	}
	return len(closers)
}
