package links

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ErrStoreFull is returned when a file would take the store beyond
// max_store_bytes.
var ErrStoreFull = errors.New("links: store is full (max_store_bytes)")

// Store is a content-addressed directory: each file is named by the hex
// SHA-256 of its content, with a "<sum>.json" sidecar holding the media
// type and file name it arrived with. Files are written to a temporary
// name, synced and renamed, so a reader never sees half a file; the same
// content is stored once.
type Store struct {
	dir string
	max int64 // 0: no bound

	mu   sync.Mutex
	used int64 // octets of content files

	// pruneMu orders Prune's removal of a file against Put finding and
	// touching the same file.
	pruneMu sync.Mutex
}

// Meta is what the sidecar records about a stored file.
type Meta struct {
	ContentType string    `json:"content_type"`
	Filename    string    `json:"filename"`
	Size        int64     `json:"size"`
	Stored      time.Time `json:"stored"`
}

// Stored is the result of Store.Put. Sum is "" when the content was
// smaller than the minimum and not stored.
type Stored struct {
	Sum  string
	Size int64
}

// readError marks an error of the reader Put copies from (a decoding
// error), as opposed to one of the store.
type readError struct{ err error }

func (e *readError) Error() string { return "read content: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// OpenStore opens the store in dir, which must exist, and counts what it
// holds for max (0 = no bound).
func OpenStore(dir string, max int64) (*Store, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("store directory %s is not a directory", dir)
	}
	s := &Store{dir: dir, max: max}
	if max > 0 {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("store directory: %w", err)
		}
		for _, e := range entries {
			if !isSum(e.Name()) {
				continue
			}
			if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
				s.used += info.Size()
			}
		}
	}
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func isSum(v string) bool {
	if len(v) != 64 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Put stores the content r yields if it has at least minSize octets. An
// error means nothing new is referenced: the caller must not drop the
// content.
func (s *Store) Put(ctx context.Context, r io.Reader, meta Meta, minSize int64) (Stored, error) {
	f, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return Stored{}, fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return Stored{}, err
		}
		k, rerr := r.Read(buf)
		if k > 0 {
			n += int64(k)
			if s.max > 0 && s.current()+n > s.max {
				return Stored{}, ErrStoreFull
			}
			h.Write(buf[:k])
			if _, err := f.Write(buf[:k]); err != nil {
				return Stored{}, fmt.Errorf("write %s: %w", tmp, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return Stored{}, &readError{rerr}
		}
	}
	if n < minSize {
		return Stored{Size: n}, nil
	}
	sum := hex.EncodeToString(h.Sum(nil))
	final := filepath.Join(s.dir, sum)
	if ok, err := s.touchIfStored(final, n); err != nil {
		return Stored{}, err
	} else if ok {
		return Stored{Sum: sum, Size: n}, nil
	}
	if err := f.Sync(); err != nil {
		return Stored{}, fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return Stored{}, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := s.reserve(n); err != nil {
		return Stored{}, err
	}
	meta.Size, meta.Stored = n, time.Now().UTC()
	if err := s.writeSidecar(sum, meta); err != nil {
		s.release(n)
		return Stored{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		s.release(n)
		return Stored{}, fmt.Errorf("rename into store: %w", err)
	}
	committed = true
	if err := syncDir(s.dir); err != nil {
		return Stored{}, err
	}
	return Stored{Sum: sum, Size: n}, nil
}

// touchIfStored reports whether final already holds the n octets, and
// then touches it: Prune removes files by age, and a fresh link must not
// point to one it removes. Under the lock Prune takes per file.
func (s *Store) touchIfStored(final string, n int64) (bool, error) {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	fi, err := os.Stat(final)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != n {
		return false, nil
	}
	now := time.Now()
	if err := os.Chtimes(final, now, now); err != nil {
		return false, fmt.Errorf("touch %s: %w", final, err)
	}
	return true, nil
}

// Prune removes the files (and their sidecars) last stored or linked
// before cutoff, and leftovers of interrupted writes older than that. A
// link is valid for ttl from the time it was made, and making one touches
// the file, so with cutoff = now - ttl no valid link loses its file.
// It returns how many files it removed and their size.
func (s *Store) Prune(cutoff time.Time) (files int, freed int64, err error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("links: prune: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		switch {
		case isSum(name):
			n, ok, err := s.pruneFile(name, cutoff)
			if err != nil {
				errs = append(errs, err)
			} else if ok {
				files++
				freed += n
			}
		case strings.HasPrefix(name, ".tmp-"):
			if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
				_ = os.Remove(filepath.Join(s.dir, name))
			}
		case strings.HasSuffix(name, ".json") && isSum(strings.TrimSuffix(name, ".json")):
			// A sidecar whose file never arrived (a crash between the two
			// renames) or is gone.
			if _, err := os.Stat(filepath.Join(s.dir, strings.TrimSuffix(name, ".json"))); errors.Is(err, fs.ErrNotExist) {
				if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
					_ = os.Remove(filepath.Join(s.dir, name))
				}
			}
		}
	}
	return files, freed, errors.Join(errs...)
}

// pruneFile removes sum and its sidecar if it is still older than cutoff
// once the lock is held.
func (s *Store) pruneFile(sum string, cutoff time.Time) (int64, bool, error) {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	path := filepath.Join(s.dir, sum)
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || !fi.ModTime().Before(cutoff) {
		return 0, false, nil
	}
	if err := os.Remove(path); err != nil {
		return 0, false, fmt.Errorf("links: prune %s: %w", sum, err)
	}
	_ = os.Remove(path + ".json")
	s.release(fi.Size())
	return fi.Size(), true, nil
}

func (s *Store) current() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

func (s *Store) reserve(n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.max > 0 && s.used+n > s.max {
		return ErrStoreFull
	}
	s.used += n
	return nil
}

func (s *Store) release(n int64) {
	s.mu.Lock()
	s.used -= n
	s.mu.Unlock()
}

func (s *Store) writeSidecar(sum string, meta Meta) error {
	data, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode sidecar: %w", err)
	}
	f, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("create sidecar: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, sum+".json"))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write sidecar: %w", err)
	}
	return nil
}

// meta reads the sidecar of sum; a missing or broken one gives the
// neutral type.
func (s *Store) meta(sum string) Meta {
	m := Meta{ContentType: "application/octet-stream"}
	data, err := os.ReadFile(filepath.Join(s.dir, sum+".json"))
	if err != nil || len(data) > 64<<10 {
		return m
	}
	var got Meta
	if json.Unmarshal(data, &got) != nil {
		return m
	}
	if _, _, err := mime.ParseMediaType(got.ContentType); err == nil {
		m.ContentType = got.ContentType
	}
	m.Filename, m.Size, m.Stored = got.Filename, got.Size, got.Stored
	return m
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync store directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync store directory: %w", err)
	}
	return nil
}
