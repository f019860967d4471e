package attachments

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxArchiveExpanded bounds the sum of the sizes the central directory of
// an archive claims for its members: more is an archive bomb, whatever a
// scanner behind us would do with it.
const maxArchiveExpanded = 1 << 30

// archive spools a zip part (head and the rest of body) to an unlinked
// temporary file, at most max_archive_size octets, and lists its members
// without extracting them. A larger zip is read through unlisted.
func (sc *scanner) archive(body io.Reader, head []byte, name string) error {
	f, err := os.CreateTemp("", "opes-zip-*")
	if err != nil {
		return fmt.Errorf("attachments: spool archive: %w", err)
	}
	_ = os.Remove(f.Name())
	defer f.Close()
	limit := sc.s.limits.archiveSize
	if _, err := f.Write(head); err != nil {
		return fmt.Errorf("attachments: spool archive: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(body, limit+1-int64(len(head))))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("attachments: spool archive: %w", err)
		}
		return sc.malformed(err)
	}
	size := int64(len(head)) + n
	if size > limit {
		if _, err := io.Copy(io.Discard, body); err != nil {
			return sc.malformed(err)
		}
		return nil
	}
	return sc.listZip(f, size, name, 1)
}

// maxZipNesting bounds zips inside zips: each level is spooled and listed
// like the outer one; a deeper archive is refused as a bomb.
const maxZipNesting = 4

func (sc *scanner) listZip(f *os.File, size int64, name string, level int) error {
	count, err := zipEntries(f, size)
	if err != nil {
		return sc.found(FindingMalformed, name, "unreadable zip archive")
	}
	if count > uint64(sc.s.limits.members) {
		return sc.found(FindingArchiveBomb, name, fmt.Sprintf("%d members", count))
	}
	zr, err := zip.NewReader(f, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return sc.found(FindingMalformed, name, "unreadable zip archive")
	}
	var total uint64
	for _, m := range zr.File {
		if err := sc.checkNames([]string{m.Name}, name); err != nil {
			return err
		}
		if sc.s.encrypted && m.Flags&1 != 0 {
			return sc.found(FindingEncrypted, name, "")
		}
		total += m.UncompressedSize64
		if total > maxArchiveExpanded || total < m.UncompressedSize64 {
			return sc.found(FindingArchiveBomb, name, "claims more than 1 GiB")
		}
	}
	// Zips inside the zip: their members' names and types count too.
	for _, m := range zr.File {
		if m.Flags&1 != 0 || m.UncompressedSize64 > uint64(sc.s.limits.archiveSize) || !isZipName(m.Name) {
			continue
		}
		inner := name + ": " + m.Name
		if level >= maxZipNesting {
			return sc.found(FindingArchiveBomb, inner, fmt.Sprintf("zip nested more than %d deep", maxZipNesting))
		}
		if err := sc.nestedZip(m, inner, level+1); err != nil {
			return err
		}
	}
	return nil
}

func isZipName(n string) bool {
	return len(n) > 4 && strings.EqualFold(n[len(n)-4:], ".zip")
}

// nestedZip spools one member that is a zip (bounded by its declared size
// and max_archive_size, whatever it really expands to) and lists it.
func (sc *scanner) nestedZip(m *zip.File, name string, level int) error {
	rc, err := m.Open()
	if err != nil {
		return sc.found(FindingMalformed, name, "unreadable zip archive")
	}
	defer rc.Close()
	f, err := os.CreateTemp("", "opes-zip-*")
	if err != nil {
		return fmt.Errorf("attachments: spool archive: %w", err)
	}
	_ = os.Remove(f.Name())
	defer f.Close()
	limit := min(int64(m.UncompressedSize64), sc.s.limits.archiveSize)
	n, err := io.Copy(f, io.LimitReader(rc, limit+1))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("attachments: spool archive: %w", err)
		}
		return sc.found(FindingMalformed, name, "unreadable zip archive")
	}
	if n > limit {
		return sc.found(FindingArchiveBomb, name, "expands beyond what it declares")
	}
	return sc.listZip(f, n, name, level)
}

// zipEntries reads the number of members from the end of central
// directory record (and its zip64 form) before archive/zip allocates one
// value per member.
func zipEntries(r io.ReaderAt, size int64) (uint64, error) {
	const eocdLen, zip64LocLen, zip64EOCDLen = 22, 20, 56
	n := min(size, 0xffff+eocdLen)
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, size-n); err != nil && err != io.EOF {
		return 0, err
	}
	i := bytes.LastIndex(buf, []byte("PK\x05\x06"))
	if i < 0 || len(buf)-i < eocdLen {
		return 0, errors.New("no end of central directory")
	}
	count := uint64(binary.LittleEndian.Uint16(buf[i+10:]))
	if count != 0xffff || i < zip64LocLen {
		return count, nil
	}
	loc := buf[i-zip64LocLen : i]
	if !bytes.HasPrefix(loc, []byte("PK\x06\x07")) {
		return count, nil
	}
	off := binary.LittleEndian.Uint64(loc[8:])
	if off > uint64(size) || uint64(size)-off < zip64EOCDLen {
		return 0, errors.New("bad zip64 locator")
	}
	rec := make([]byte, zip64EOCDLen)
	if _, err := r.ReadAt(rec, int64(off)); err != nil {
		return 0, err
	}
	if !bytes.HasPrefix(rec, []byte("PK\x06\x06")) {
		return 0, errors.New("bad zip64 end of central directory")
	}
	return binary.LittleEndian.Uint64(rec[32:]), nil
}
