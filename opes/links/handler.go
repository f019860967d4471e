package links

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ReadKey reads an HMAC key file: at least 32 octets, used as they are
// (a trailing newline included), and not readable by everyone.
func ReadKey(path string) ([]byte, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%q is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return nil, fmt.Errorf("%s is readable by everyone (chmod o-r)", path)
	}
	if fi.Size() > maxKey {
		return nil, fmt.Errorf("%s is longer than %d octets", path, maxKey)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(key) < minKey {
		return nil, fmt.Errorf("%s holds %d octets; a key needs at least %d (e.g. head -c 32 /dev/urandom > key)", path, len(key), minKey)
	}
	return key, nil
}

// ensureKey creates the key file path with 32 random octets unless it
// exists. The key is written under a temporary name and linked into
// place, so a concurrent start never reads half a key.
func ensureKey(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("make key: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-key-*")
	if err != nil {
		return fmt.Errorf("make key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(key[:])
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path)
	}
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("make key %s: %w", path, err)
	}
	return nil
}

// sign is the link signature: HMAC-SHA256 over "sum|name|expiry",
// base64url without padding. The sum has a fixed length and the expiry
// is digits, so no two triples give the same input.
func sign(key []byte, sum, name string, exp int64) string {
	return base64.RawURLEncoding.EncodeToString(mac(key, sum, name, exp))
}

func mac(key []byte, sum, name string, exp int64) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sum + "|" + name + "|" + strconv.FormatInt(exp, 10)))
	return m.Sum(nil)
}

// HandlerOptions configure NewHandler.
type HandlerOptions struct {
	Dir     string           // the store directory
	KeyFile string           // the key the links were signed with; "" = <Dir>/.links-key
	Now     func() time.Time // clock; nil means time.Now
	Log     *slog.Logger     // nil means slog.Default()
}

// NewHandler returns the handler serving the files of the store in
// o.Dir; see Service.Handler.
func NewHandler(o HandlerOptions) (http.Handler, error) {
	keyFile := o.KeyFile
	if keyFile == "" {
		keyFile = filepath.Join(o.Dir, DefaultKeyName)
	}
	key, err := ReadKey(keyFile)
	if err != nil {
		return nil, fmt.Errorf("links: key file: %w", err)
	}
	st, err := OpenStore(o.Dir, 0)
	if err != nil {
		return nil, fmt.Errorf("links: %w", err)
	}
	h := &handler{store: st, key: key, now: o.Now, log: o.Log}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	return h, nil
}

// Handler serves GET and HEAD of ".../<sha256>/<filename>?e=&s=" under
// any prefix (MountPath is the one base_url is expected to use): 403 for
// a signature that does not verify, 410 for an expired link, 404 for a
// file no longer stored; otherwise the file as a download, with Range
// support.
func (s *Service) Handler() http.Handler {
	return &handler{store: s.store, key: s.key, now: func() time.Time { return s.now() }, log: s.log}
}

type handler struct {
	store *Store
	key   []byte
	now   func() time.Time
	log   *slog.Logger
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	segs := strings.Split(r.URL.EscapedPath(), "/")
	if len(segs) < 3 {
		http.NotFound(w, r)
		return
	}
	sum := segs[len(segs)-2]
	name, err := url.PathUnescape(segs[len(segs)-1])
	if err != nil || !isSum(sum) || name == "" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	exp, err := strconv.ParseInt(q.Get("e"), 10, 64)
	// Strict: one signature has one spelling (the last character's
	// unused bits must be zero).
	got, serr := base64.RawURLEncoding.Strict().DecodeString(q.Get("s"))
	if err != nil || serr != nil || !hmac.Equal(got, mac(h.key, sum, name, exp)) {
		http.Error(w, "invalid link signature", http.StatusForbidden)
		return
	}
	if h.now().Unix() > exp {
		http.Error(w, "this link has expired", http.StatusGone)
		return
	}
	f, err := os.Open(filepath.Join(h.store.dir, sum))
	if errors.Is(err, fs.ErrNotExist) {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		h.log.Error("links: open stored file", "sum", sum, "err", err)
		http.Error(w, "file unavailable", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	meta := h.store.meta(sum)
	hd := w.Header()
	hd.Set("Content-Type", meta.ContentType)
	hd.Set("Content-Disposition", contentDisposition(name))
	hd.Set("X-Content-Type-Options", "nosniff")
	// The content came from a stranger: a browser that renders it anyway
	// must not run it with this origin's rights.
	hd.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	hd.Set("Cache-Control", "private")
	hd.Set("ETag", `"`+sum+`"`)
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// contentDisposition is "attachment" with an ASCII fallback name and the
// UTF-8 name (RFC 6266, RFC 5987).
func contentDisposition(name string) string {
	var ascii, ext strings.Builder
	for _, r := range name {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' || r == '%' {
			ascii.WriteByte('_')
		} else {
			ascii.WriteRune(r)
		}
	}
	const hexd = "0123456789ABCDEF"
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			ext.WriteByte(c)
		} else {
			ext.WriteByte('%')
			ext.WriteByte(hexd[c>>4])
			ext.WriteByte(hexd[c&15])
		}
	}
	return `attachment; filename="` + ascii.String() + `"; filename*=UTF-8''` + ext.String()
}
