// Package audit writes opes-milter's audit log: one JSON object per line
// for every decision an operator or a recipient may have to account for
// later — bypass requests and decisions (PROFILE §5), changes to
// out-of-band preferences, quarantine actions and non-delivery reports.
//
// The file is opened for appending only and every record is written with
// one write(2) and fsynced before Record returns, so a record that was
// acknowledged survives a crash and lines from several processes sharing
// the file never interleave. Values that came from the wire cannot forge
// a line: JSON escapes CR and LF inside strings.
package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Kinds of events the callers record.
const (
	KindBypassRequest     = "bypass-request"
	KindBypassDecision    = "bypass-decision"
	KindPreferenceAdd     = "preference-add"
	KindPreferenceRemove  = "preference-remove"
	KindQuarantinePut     = "quarantine-put"
	KindQuarantineRelease = "quarantine-release"
	KindQuarantineDelete  = "quarantine-delete"
	KindQuarantineExpire  = "quarantine-expire"
	KindNDRQueued         = "ndr-queued"
	KindNDRSent           = "ndr-sent"
	KindNDRFailed         = "ndr-failed"
)

// Event is one audit record.
type Event struct {
	// Time defaults to the time of Record.
	Time time.Time `json:"time"`
	// Kind is one of the Kind constants.
	Kind    string `json:"kind"`
	TraceID string `json:"trace_id,omitempty"`
	// Actor is who asked: "smtp:<client ip>", "cli:<user>", "api:<token
	// name>", "expirer".
	Actor string `json:"actor,omitempty"`
	// Subject is what it is about: a recipient, a quarantine or
	// preference id, a queue id.
	Subject  string            `json:"subject,omitempty"`
	Service  string            `json:"service,omitempty"`
	Decision string            `json:"decision,omitempty"`
	Reason   string            `json:"reason,omitempty"`
	Detail   map[string]string `json:"detail,omitempty"`
}

// maxRecord bounds one line; a record beyond it has its Detail dropped
// and says so, rather than failing or filling the disk.
const maxRecord = 64 << 10

// Log is an open audit log; safe for concurrent use.
type Log struct {
	path string
	mu   sync.Mutex
	f    *os.File // nil once closed
}

// ErrClosed is returned by Record and Reopen after Close.
var ErrClosed = errors.New("audit: log closed")

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	return f, nil
}

// Open opens (creating with mode 0640) the log at path for appending.
func Open(path string) (*Log, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	return &Log{path: path, f: f}, nil
}

// encode renders e as one line.
func encode(e Event) ([]byte, error) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Addresses in angle brackets stay readable; the file is no HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, err
	}
	if buf.Len() > maxRecord {
		e.Detail = map[string]string{"truncated": fmt.Sprintf("record of %d bytes exceeded %d; detail dropped", buf.Len(), maxRecord)}
		for _, s := range []*string{&e.Reason, &e.Subject, &e.Actor, &e.Service, &e.Decision, &e.TraceID} {
			if len(*s) > 1024 {
				*s = (*s)[:1024] + "…"
			}
		}
		buf.Reset()
		if err := enc.Encode(e); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// Record appends e as one JSON line and fsyncs the file. An error means
// the record may not be on disk; the caller decides whether the action
// may proceed unaudited.
func (l *Log) Record(e Event) error {
	if e.Kind == "" {
		return errors.New("audit: event without kind")
	}
	line, err := encode(e)
	if err != nil {
		return fmt.Errorf("audit: encode %s event: %w", e.Kind, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	if _, err := l.f.Write(line); err != nil {
		return fmt.Errorf("audit: write %s: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", l.path, err)
	}
	return nil
}

// Reopen opens the path again and switches to it, for log rotation: after
// the rotator renamed the file, SIGHUP makes the next records go to a new
// file at the old name. If the path cannot be opened the log keeps
// writing to the old file and the error is returned.
func (l *Log) Reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	old := l.f
	l.f = f
	if err := old.Close(); err != nil {
		return fmt.Errorf("audit: close rotated %s: %w", l.path, err)
	}
	return nil
}

// Close closes the file; later Records fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("audit: close %s: %w", l.path, err)
	}
	return nil
}
