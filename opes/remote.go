package opes

import (
	"fmt"
	"io"
	"strings"
)

// This file is what a remote (callout) service needs from the package:
// the processor side reads the header as services see it and applies
// header changes a callout server returns; the callout server side
// rebuilds a Transaction from the parts it received, runs a Service on
// it, and reads back the changes the service made.

// MessageFields returns the working header as services may change it:
// every field except the processor's own OPES-System field, in order.
func (h *Header) MessageFields() []HeaderField {
	out := make([]HeaderField, 0, len(h.fields))
	for _, f := range h.fields {
		if f.orig != origOwn {
			out = append(out, f)
		}
	}
	return out
}

// ApplyChange applies one change a callout server returned to the
// working header: AppendField adds a field at the end, InsertField at
// index 0 puts one at the top as Prepend does, ChangeField and
// DeleteField act on the Index-th (1-based) field named Name among
// MessageFields. Names and values are checked as Add checks them.
// Insertion anywhere else is refused.
func (h *Header) ApplyChange(c HeaderChange) error {
	switch c.Kind {
	case AppendField:
		return h.Add(c.Name, c.Value)
	case InsertField:
		if c.Index != 0 {
			return fmt.Errorf("opes: insertion at index %d: services insert at the top only", c.Index)
		}
		return h.Prepend(c.Name, c.Value)
	case ChangeField, DeleteField:
		if err := checkFieldName(c.Name); err != nil {
			return err
		}
		i := h.nthMessageField(c.Name, c.Index)
		if i < 0 {
			return fmt.Errorf("opes: header has no field %s number %d", c.Name, c.Index)
		}
		if c.Kind == DeleteField {
			h.fields = append(h.fields[:i], h.fields[i+1:]...)
			return nil
		}
		v, err := cleanFieldValue(c.Value)
		if err != nil {
			return err
		}
		h.fields[i].Value = v
		return nil
	}
	return fmt.Errorf("opes: header change kind %d is not allowed from a service", c.Kind)
}

// ApplyChanges applies changes in order, all or none: on the first
// change that fails, the header is left as it was.
func (h *Header) ApplyChanges(cs []HeaderChange) error {
	saved := append([]HeaderField(nil), h.fields...)
	for i, c := range cs {
		if err := h.ApplyChange(c); err != nil {
			h.fields = saved
			return fmt.Errorf("change %d of %d: %w", i+1, len(cs), err)
		}
	}
	return nil
}

func (h *Header) nthMessageField(name string, n int) int {
	if n <= 0 {
		return -1
	}
	for i, f := range h.fields {
		if f.orig != origOwn && strings.EqualFold(f.Name, name) {
			if n--; n == 0 {
				return i
			}
		}
	}
	return -1
}

// RemoteTransaction is a Transaction rebuilt on a callout server from the
// parts an OPES processor sent, so that a Service runs there exactly as
// it would in the processor.
type RemoteTransaction struct {
	Tx *Transaction
}

// NewRemoteTransaction starts an empty transaction for conn; the body is
// spooled with opts.
func NewRemoteTransaction(conn *Connection, opts BodyOptions) *RemoteTransaction {
	if conn == nil {
		conn = &Connection{}
	}
	return &RemoteTransaction{Tx: &Transaction{Conn: conn, Header: NewHeader(), Body: NewBody(opts)}}
}

// SetStage moves the transaction to st before the hook of st runs:
// changes are allowed only at StageEOM, as in the processor.
func (r *RemoteTransaction) SetStage(st Stage) { r.Tx.stage = st }

// SetTraceID records the processor's trace id, when it sent one.
func (r *RemoteTransaction) SetTraceID(id string) { r.Tx.traceID = id }

// ReceivedField appends a header field as the processor sent it; the
// service's changes are computed against these fields.
func (r *RemoteTransaction) ReceivedField(name, value string) { r.Tx.Header.received(name, value) }

// RemoteChanges are the changes a service made to a RemoteTransaction.
type RemoteChanges struct {
	// Header holds ChangeField, DeleteField and AppendField changes in an
	// order safe to apply one after the other (see Header.ApplyChange).
	Header   []HeaderChange
	Body     io.ReadSeeker // replacement body; nil if unchanged
	Sender   *Address
	AddRcpts []Address
	DelRcpts []string
}

// Changes returns what the service changed.
func (r *RemoteTransaction) Changes() RemoteChanges {
	first, appends := r.Tx.Header.diff()
	c := RemoteChanges{
		Header:   append(first, appends...),
		Sender:   r.Tx.envelope.sender,
		AddRcpts: r.Tx.envelope.added,
		DelRcpts: r.Tx.envelope.deleted,
	}
	if r.Tx.newBody != nil {
		c.Body = r.Tx.newBody.Reader()
	}
	return c
}

// Close releases the body spool files.
func (r *RemoteTransaction) Close() { r.Tx.close() }
