package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Defaults of TraceFile.
const (
	DefaultTraceMatches = 20
	DefaultTraceBytes   = 64 << 20
	maxRecordLine       = 1 << 20
)

// TraceFile looks trace ids up in the JSON-lines transaction record file
// (policy [report] transactions): one object per line with a "trace_id".
// A lookup reads only the newest MaxBytes of the file and stops after
// MaxMatches records, so a large file or a common id cannot hold the
// admin listener; older records are in rotated files, for grep.
type TraceFile struct {
	Path       string
	MaxMatches int   // 0: DefaultTraceMatches
	MaxBytes   int64 // 0: DefaultTraceBytes
}

// Lookup implements TraceLookup. A missing file is no error: nothing has
// been recorded yet (or it was just rotated).
func (t TraceFile) Lookup(ctx context.Context, traceID string) ([]json.RawMessage, error) {
	maxMatches, maxBytes := t.MaxMatches, t.MaxBytes
	if maxMatches <= 0 {
		maxMatches = DefaultTraceMatches
	}
	if maxBytes <= 0 {
		maxBytes = DefaultTraceBytes
	}
	if t.Path == "" {
		return nil, errors.New("transaction records: no file configured ([report] transactions)")
	}
	f, err := os.Open(t.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("transaction records: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("transaction records: %w", err)
	}
	start := max(fi.Size()-maxBytes, 0)
	// The window is fixed at the size seen now: lines appended while we
	// read are left for the next lookup.
	r := bufio.NewReaderSize(io.NewSectionReader(f, start, fi.Size()-start), 64<<10)
	if start > 0 {
		// The window starts inside a line: skip to the next whole one.
		if err := skipLine(r); err != nil {
			return nil, nil
		}
	}
	want := []byte(traceID)
	var out []json.RawMessage
	for n := 0; len(out) < maxMatches; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return out, fmt.Errorf("transaction records: %w", err)
			}
		}
		line, err := readLine(r)
		if len(line) > 0 && bytes.Contains(line, want) {
			var rec struct {
				TraceID string `json:"trace_id"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.TraceID == traceID {
				out = append(out, json.RawMessage(bytes.Clone(line)))
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("transaction records %s: %w", t.Path, err)
		}
	}
	return out, nil
}

// readLine returns the next line without its end; a line longer than
// maxRecordLine is consumed and returned empty (no record is that long).
func readLine(r *bufio.Reader) ([]byte, error) {
	var long []byte
	tooLong := false
	for {
		chunk, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !tooLong && len(long)+len(chunk) <= maxRecordLine {
				long = append(long, chunk...)
			} else {
				tooLong, long = true, nil
			}
			continue
		}
		if tooLong {
			return nil, err
		}
		if long != nil {
			chunk = append(long, chunk...)
			if len(chunk) > maxRecordLine {
				return nil, err
			}
		}
		return bytes.TrimRight(chunk, "\r\n"), err
	}
}

func skipLine(r *bufio.Reader) error {
	for {
		_, err := r.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}
