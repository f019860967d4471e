package attachments

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
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
	return sc.listZip(f, size, name)
}

func (sc *scanner) listZip(f *os.File, size int64, name string) error {
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
	return nil
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
