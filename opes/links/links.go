// Package links is the "attachments to HTTP links" service of RFC 4496
// §4.9: at the end of the message it moves large attachments out of the
// mail into a content-addressed store on disk and appends a signed,
// expiring download link for each to the text a mail client shows first
// (both the plain and the HTML alternative). Handler serves the stored
// files to whoever holds a valid link.
//
// The message is read three times, each time streamed from the body
// spool: once to learn its structure, once to store the attachments, once
// to write the new body, so a 30 MB attachment is never held in memory.
// Signed or encrypted messages are left alone (PROFILE §6), and a store
// that cannot take a file is an error: the attachment is never dropped.
//
// Options, under [service.options]:
//
//	dir = "/var/lib/opes-milter/links"   # required, absolute, must exist
//	key_file = "/etc/opes-milter/links.key" # >= 32 octets; default <dir>/.links-key, made at first use
//	base_url = "https://mx1.example.net/attachments" # required
//	min_size = 1048576        # decoded octets from which a part moves
//	ttl = "720h"              # how long a link is valid
//	max_store_bytes = 0       # bound on the store's content; 0 = none
package links

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/opes"
)

// Defaults and bounds of the options.
const (
	DefaultMinSize = 1 << 20
	DefaultTTL     = 30 * 24 * time.Hour
	// DefaultKeyName is the key file in dir used when key_file is not
	// set; it is created with 32 random octets when missing. The handler
	// never serves it: it serves SHA-256 names only.
	DefaultKeyName = ".links-key"
	// MountPath is where the admin listener is expected to serve Handler;
	// base_url then ends in /attachments. Handler itself works under any
	// prefix: it reads the last two segments of the path.
	MountPath = "/attachments/"

	maxTTL     = 10 * 365 * 24 * time.Hour
	maxBaseURL = 256
	minKey     = 32
	maxKey     = 4096
)

type options struct {
	Dir           string `toml:"dir"`
	KeyFile       string `toml:"key_file"`
	BaseURL       string `toml:"base_url"`
	MinSize       int64  `toml:"min_size"`
	TTL           string `toml:"ttl"`
	MaxStoreBytes int64  `toml:"max_store_bytes"`
}

// Service is a configured links service.
type Service struct {
	store   *Store
	key     []byte
	baseURL string // without trailing slash
	minSize int64
	ttl     time.Duration
	now     func() time.Time
	log     *slog.Logger

	// lastPrune is when expired files were last removed (unix seconds);
	// pruning marks a prune in progress.
	lastPrune atomic.Int64
	pruning   atomic.Bool
	pruned    chan struct{} // tests: receives after each background prune
}

// pruneEvery is how often the store is cleared of files no valid link
// points to; pruneMargin is how long past a link's expiry its file stays.
const (
	pruneEvery  = time.Hour
	pruneMargin = time.Hour
)

// maybePrune starts a background prune when the last one is pruneEvery
// ago. It runs from the mail path, so it never waits for the prune.
func (s *Service) maybePrune() {
	now := s.now()
	if now.Unix()-s.lastPrune.Load() < int64(pruneEvery/time.Second) || !s.pruning.CompareAndSwap(false, true) {
		return
	}
	s.lastPrune.Store(now.Unix())
	go func() {
		defer s.pruning.Store(false)
		files, freed, err := s.store.Prune(now.Add(-s.ttl - pruneMargin))
		if err != nil {
			s.log.Warn("links: removing expired attachments", "err", err)
		}
		if files > 0 {
			s.log.Info("links: expired attachments removed", "files", files, "bytes", freed)
		}
		if s.pruned != nil {
			s.pruned <- struct{}{}
		}
	}()
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("links: decode options: %w", err)
		}
	}
	s := &Service{minSize: DefaultMinSize, ttl: DefaultTTL, now: time.Now, log: slog.Default()}
	if o.Dir == "" {
		return nil, opes.FieldErrorf("dir", "is required: the directory attachments are stored in")
	}
	if !filepath.IsAbs(o.Dir) {
		return nil, opes.FieldErrorf("dir", "%q is not an absolute path", o.Dir)
	}
	if o.MaxStoreBytes < 0 {
		return nil, opes.FieldErrorf("max_store_bytes", "%d is negative", o.MaxStoreBytes)
	}
	st, err := OpenStore(o.Dir, o.MaxStoreBytes)
	if err != nil {
		return nil, &opes.FieldError{Field: "dir", Err: err}
	}
	s.store = st
	keyFile := o.KeyFile
	if keyFile == "" {
		keyFile = filepath.Join(o.Dir, DefaultKeyName)
		if err := ensureKey(keyFile); err != nil {
			return nil, &opes.FieldError{Field: "key_file", Err: err}
		}
	}
	if s.key, err = ReadKey(keyFile); err != nil {
		return nil, &opes.FieldError{Field: "key_file", Err: err}
	}
	if s.baseURL, err = checkBaseURL(o.BaseURL); err != nil {
		return nil, &opes.FieldError{Field: "base_url", Err: err}
	}
	if o.MinSize != 0 {
		if o.MinSize < 1 || o.MinSize > 1<<40 {
			return nil, opes.FieldErrorf("min_size", "%d is not between 1 and %d", o.MinSize, int64(1)<<40)
		}
		s.minSize = o.MinSize
	}
	if o.TTL != "" {
		d, err := time.ParseDuration(o.TTL)
		if err != nil {
			return nil, opes.FieldErrorf("ttl", "%q is not a duration such as \"720h\"", o.TTL)
		}
		if d < time.Minute || d > maxTTL {
			return nil, opes.FieldErrorf("ttl", "%s is not between 1m and %s", d, maxTTL)
		}
		s.ttl = d
	}
	return s, nil
}

// checkBaseURL accepts an absolute http(s) URL without query, fragment
// or user info: the links append "/<sha256>/<name>?e=..&s=..".
func checkBaseURL(v string) (string, error) {
	if v == "" {
		return "", errors.New(`is required: the public URL the links start with, e.g. "https://mx1.example.net/attachments"`)
	}
	if len(v) > maxBaseURL {
		return "", fmt.Errorf("is longer than %d octets", maxBaseURL)
	}
	if err := opes.CheckPrintable(v, maxBaseURL); err != nil {
		return "", err
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", v, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return "", fmt.Errorf("%q is not an absolute http or https URL", v)
	}
	if u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(v, "?#") || u.User != nil {
		return "", fmt.Errorf("%q has a query, fragment or user info", v)
	}
	if strings.ContainsAny(v, ` "<>\'`) {
		return "", fmt.Errorf("%q contains a space, quote or angle bracket", v)
	}
	return strings.TrimRight(v, "/"), nil
}

// Needs implements opes.Service.
func (s *Service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

// Begin implements opes.Service.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *Service
	tx *opes.Transaction
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	t.s.maybePrune()
	body := t.tx.CurrentBody() // as services before this one left it
	if body == nil || body.Size() < t.s.minSize {
		// No part of a smaller body can reach min_size.
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	top := topHeader(t.tx.Header)
	msg, err := analyze(ctx, top, body.Reader(), t.s.minSize)
	switch {
	case errors.Is(err, errSigned):
		return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "signed"}, nil
	case errors.Is(err, errMalformed):
		// The structure is not what a mail client would read either;
		// leaving the message as it is loses nothing. The attachments
		// service is the one that refuses malformed mail.
		t.s.log.Info("links: message not rewritten", "trace_id", t.tx.TraceID(), "err", err)
		return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "malformed"}, nil
	case err != nil:
		return opes.Verdict{}, err
	}
	if len(msg.candidates) == 0 {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	if err := t.s.storeParts(ctx, msg, body.Reader()); err != nil {
		if errors.Is(err, errMalformed) {
			return opes.Verdict{Kind: opes.Continue, Status: "skipped", Reason: "malformed"}, nil
		}
		return opes.Verdict{}, err
	}
	moved := msg.moved()
	if len(moved) == 0 {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	exp := t.s.now().Add(t.s.ttl)
	for _, n := range moved {
		n.link = t.s.link(n.stored.Sum, n.filename, exp)
	}
	plan := msg.planLinks(top, exp)
	err = t.tx.ReplaceBody(func(w *opes.Body) error {
		return writeMessage(ctx, w, body.Reader(), msg, plan)
	})
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("links: rewrite body: %w", err)
	}
	if err := plan.updateHeader(t.tx.Header); err != nil {
		return opes.Verdict{}, fmt.Errorf("links: update header: %w", err)
	}
	t.s.log.Info("links: attachments moved", "trace_id", t.tx.TraceID(), "parts", len(moved))
	return opes.Verdict{Kind: opes.Continue, Action: "part-replaced",
		Reason: fmt.Sprintf("%d attachment(s) moved to links", len(moved))}, nil
}

// link is the signed download URL of one stored file.
func (s *Service) link(sum, name string, exp time.Time) string {
	e := exp.Unix()
	return fmt.Sprintf("%s/%s/%s?e=%d&s=%s", s.baseURL, sum, url.PathEscape(name), e, sign(s.key, sum, name, e))
}

// storeParts is the second read: it moves the decoded content of every
// candidate part into the store. A part that does not decode stays in
// the message.
func (s *Service) storeParts(ctx context.Context, msg *message, body io.Reader) error {
	g := &guardReader{r: body, ctx: ctx}
	var storeErr error // not the message's fault: never "malformed"
	var visit func(n *node, body io.Reader) error
	visit = func(n *node, body io.Reader) error {
		if n.multipart {
			return eachChild(n, body, func(_ int, c *node, _ textproto.Header, body io.Reader) error {
				return visit(c, body)
			})
		}
		if !n.candidate {
			return nil
		}
		res, err := s.store.Put(ctx, decode(n.cte, body), Meta{ContentType: n.contentType(), Filename: n.filename}, s.minSize)
		var rerr *readError
		switch {
		case errors.As(err, &rerr):
			if f := g.failed(); f != nil {
				return f
			}
			s.log.Info("links: attachment does not decode; left in the message", "err", rerr.err)
			return nil
		case err != nil:
			storeErr = fmt.Errorf("links: store attachment: %w", err)
			return storeErr
		}
		if res.Sum != "" {
			n.stored = &res
		}
		return nil
	}
	err := visit(msg.root, g)
	if storeErr != nil {
		return storeErr
	}
	return g.classify(err)
}
