package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/opesmilter/opes-milter/internal/admin"
	"github.com/opesmilter/opes-milter/policy"
)

// The daemon holds the embedded database open, so everything that reads
// or changes the store goes through its admin API.

const adminUsage = `  opesctl bypass add -recipient ADDR|@DOMAIN [-sender ADDR|@DOMAIN] [-kind non-opes-version|no-optional]
                     [-service URI]... [-expires 720h] [-note TEXT]
  opesctl bypass list [-recipient ADDR|@DOMAIN]
  opesctl bypass remove ID
  opesctl quarantine list [-status held|released|deleted|expired] [-recipient ADDR] [-limit N]
  opesctl quarantine show|release|delete ID
  opesctl quarantine message ID > original.eml
  opesctl outbox list [-status queued|failed] [-limit N]
  opesctl trace ID
The admin commands (bypass, quarantine, outbox, trace) talk to the daemon and also take
  -admin http://127.0.0.1:PORT   default $OPES_ADMIN, or [admin] listen of -config FILE
  -token-file FILE               default $OPES_TOKEN_FILE; its first "name:token" line, or a bare token
  -json                          JSON output for scripts
  -timeout 30s`

// errUsage makes a command exit 2.
var errUsage = errors.New("usage")

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	admin, tokenFile, config string
	json                     bool
	timeout                  time.Duration
}

func (a *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.admin, "admin", "", "admin API base URL (default $OPES_ADMIN or [admin] listen of -config)")
	fs.StringVar(&a.tokenFile, "token-file", "", "file with the API token (default $OPES_TOKEN_FILE)")
	fs.StringVar(&a.config, "config", "", "policy file whose [admin] listen gives the address")
	fs.BoolVar(&a.json, "json", false, "print JSON for scripts")
	fs.DurationVar(&a.timeout, "timeout", 30*time.Second, "give up after this long")
}

// client resolves the address and the token.
func (a *adminFlags) client() (*apiClient, error) {
	base := a.admin
	if base == "" {
		base = os.Getenv("OPES_ADMIN")
	}
	if base == "" && a.config != "" {
		cfg, err := policy.Load(a.config)
		if err != nil {
			return nil, err
		}
		if cfg.Admin.Listen == "" {
			return nil, fmt.Errorf("%s: [admin] listen is not set; the daemon has no admin API", a.config)
		}
		base = cfg.Admin.Listen
	}
	if base == "" {
		return nil, fmt.Errorf("%w: no admin address: give -admin, set OPES_ADMIN or give -config", errUsage)
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: admin address %q is not http://HOST:PORT", errUsage, base)
	}
	path := a.tokenFile
	if path == "" {
		path = os.Getenv("OPES_TOKEN_FILE")
	}
	if path == "" {
		return nil, fmt.Errorf("%w: no token: give -token-file or set OPES_TOKEN_FILE", errUsage)
	}
	tok, err := admin.ReadClientToken(path)
	if err != nil {
		return nil, err
	}
	return &apiClient{base: strings.TrimRight(base, "/"), token: tok, http: &http.Client{Timeout: a.timeout}}, nil
}

type apiClient struct {
	base, token string
	http        *http.Client
}

// call sends a JSON request and decodes a JSON answer into out.
func (c *apiClient) call(ctx context.Context, method, path string, in, out any) error {
	body, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, body)
		return err
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return nil
}

// send returns the body of a 2xx answer; other answers become errors
// carrying the server's message.
func (c *apiClient) send(ctx context.Context, method, path string, in any) (io.ReadCloser, error) {
	var rd io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode/100 == 2 {
		return resp.Body, nil
	}
	defer resp.Body.Close()
	var e admin.ErrorView
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return nil, fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
}

// adminCommand runs one admin subcommand: it parses the flags (also
// after positional arguments), checks the number of arguments, builds the
// client and maps errors to exit codes.
func adminCommand(name string, args []string, nargs int, stdout, stderr io.Writer, setup func(*flag.FlagSet),
	do func(ctx context.Context, c *apiClient, f *adminFlags, pos []string) error) int {
	fs := flag.NewFlagSet("opesctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f adminFlags
	f.register(fs)
	if setup != nil {
		setup(fs)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != nargs {
		if nargs == 1 {
			fmt.Fprintf(stderr, "opesctl %s: want one ID\n", name)
		} else {
			fmt.Fprintf(stderr, "opesctl %s: unexpected argument %q\n", name, pos[0])
		}
		return 2
	}
	c, err := f.client()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		defer cancel()
		err = do(ctx, c, &f, pos)
	}
	if err != nil {
		fmt.Fprintf(stderr, "opesctl %s: %v\n", name, strings.TrimPrefix(err.Error(), "usage: "))
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

// parseInterspersed lets flags follow positional arguments
// ("remove ID -json").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func bypassCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "opesctl bypass: want add, list or remove")
		return 2
	}
	switch args[0] {
	case "add":
		var req admin.PreferenceRequest
		var services listFlag
		var expires time.Duration
		setup := func(fs *flag.FlagSet) {
			fs.StringVar(&req.Recipient, "recipient", "", "recipient address or @domain (required)")
			fs.StringVar(&req.Sender, "sender", "", "only mail from this address or @domain")
			fs.StringVar(&req.Kind, "kind", "non-opes-version", "non-opes-version or no-optional")
			fs.Var(&services, "service", "only this service URI (repeatable)")
			fs.DurationVar(&expires, "expires", 0, "expire after this long, e.g. 720h (default never)")
			fs.StringVar(&req.Note, "note", "", "free text kept with the entry")
		}
		return adminCommand("bypass add", args[1:], 0, stdout, stderr, setup, func(ctx context.Context, c *apiClient, f *adminFlags, _ []string) error {
			if req.Recipient == "" {
				return fmt.Errorf("%w: -recipient is required", errUsage)
			}
			if expires < 0 {
				return fmt.Errorf("%w: -expires must be positive", errUsage)
			}
			if expires > 0 {
				req.ExpiresIn = expires.String()
			}
			req.Services = services
			var p admin.PreferenceView
			if err := c.call(ctx, "POST", "/api/v1/bypass", req, &p); err != nil {
				return err
			}
			if f.json {
				return printJSON(stdout, p)
			}
			fmt.Fprintf(stdout, "added %s\n", p.ID)
			printPreferences(stdout, []admin.PreferenceView{p})
			return nil
		})
	case "list":
		var rcpt string
		setup := func(fs *flag.FlagSet) {
			fs.StringVar(&rcpt, "recipient", "", "only entries for this recipient or @domain")
		}
		return adminCommand("bypass list", args[1:], 0, stdout, stderr, setup, func(ctx context.Context, c *apiClient, f *adminFlags, _ []string) error {
			var ps []admin.PreferenceView
			if err := c.call(ctx, "GET", "/api/v1/bypass?"+url.Values{"recipient": {rcpt}}.Encode(), nil, &ps); err != nil {
				return err
			}
			if f.json {
				return printJSON(stdout, ps)
			}
			printPreferences(stdout, ps)
			return nil
		})
	case "remove", "rm", "delete":
		return adminCommand("bypass remove", args[1:], 1, stdout, stderr, nil, func(ctx context.Context, c *apiClient, f *adminFlags, pos []string) error {
			var out map[string]string
			if err := c.call(ctx, "DELETE", "/api/v1/bypass/"+url.PathEscape(pos[0]), nil, &out); err != nil {
				return err
			}
			if f.json {
				return printJSON(stdout, out)
			}
			fmt.Fprintf(stdout, "removed %s\n", pos[0])
			return nil
		})
	}
	fmt.Fprintf(stderr, "opesctl bypass: unknown subcommand %q (want add, list or remove)\n", args[0])
	return 2
}

func quarantineCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "opesctl quarantine: want list, show, message, release or delete")
		return 2
	}
	sub := args[0]
	switch sub {
	case "list":
		var status, rcpt string
		var limit int
		setup := func(fs *flag.FlagSet) {
			fs.StringVar(&status, "status", "", "held, released, deleted or expired (default all)")
			fs.StringVar(&rcpt, "recipient", "", "only messages for this recipient")
			fs.IntVar(&limit, "limit", 0, "at most this many (default: the server's)")
		}
		return adminCommand("quarantine list", args[1:], 0, stdout, stderr, setup, func(ctx context.Context, c *apiClient, f *adminFlags, _ []string) error {
			q := url.Values{}
			if status != "" {
				q.Set("status", status)
			}
			if rcpt != "" {
				q.Set("recipient", rcpt)
			}
			if limit != 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var items []admin.QuarantineView
			if err := c.call(ctx, "GET", "/api/v1/quarantine?"+q.Encode(), nil, &items); err != nil {
				return err
			}
			if f.json {
				return printJSON(stdout, items)
			}
			tw := table(stdout, "ID", "CREATED", "STATUS", "SENDER", "RECIPIENTS", "SIZE", "REASON", "TRACE")
			for _, it := range items {
				row(tw, it.ID, stamp(&it.Created), it.Status, orNull(it.Sender), strings.Join(it.Recipients, ","),
					strconv.FormatInt(it.Size, 10), it.Reason, it.TraceID)
			}
			return tw.Flush()
		})
	case "show", "release", "delete":
		method, path := "GET", ""
		switch sub {
		case "release":
			method, path = "POST", "/release"
		case "delete":
			method = "DELETE"
		}
		return adminCommand("quarantine "+sub, args[1:], 1, stdout, stderr, nil, func(ctx context.Context, c *apiClient, f *adminFlags, pos []string) error {
			var it admin.QuarantineView
			if err := c.call(ctx, method, "/api/v1/quarantine/"+url.PathEscape(pos[0])+path, nil, &it); err != nil {
				return err
			}
			if f.json {
				return printJSON(stdout, it)
			}
			if sub != "show" {
				fmt.Fprintf(stdout, "%s: %s\n", it.ID, it.Status)
				return nil
			}
			printQuarantine(stdout, it)
			return nil
		})
	case "message":
		return adminCommand("quarantine message", args[1:], 1, stdout, stderr, nil, func(ctx context.Context, c *apiClient, _ *adminFlags, pos []string) error {
			body, err := c.send(ctx, "GET", "/api/v1/quarantine/"+url.PathEscape(pos[0])+"/message", nil)
			if err != nil {
				return err
			}
			defer body.Close()
			if _, err := io.Copy(stdout, body); err != nil {
				return fmt.Errorf("reading the message: %w", err)
			}
			return nil
		})
	}
	fmt.Fprintf(stderr, "opesctl quarantine: unknown subcommand %q (want list, show, message, release or delete)\n", sub)
	return 2
}

func outboxCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "list" {
		fmt.Fprintln(stderr, "opesctl outbox: want list")
		return 2
	}
	var status string
	var limit int
	setup := func(fs *flag.FlagSet) {
		fs.StringVar(&status, "status", "", "queued or failed (default: the server's)")
		fs.IntVar(&limit, "limit", 0, "at most this many (default: the server's)")
	}
	return adminCommand("outbox list", args[1:], 0, stdout, stderr, setup, func(ctx context.Context, c *apiClient, f *adminFlags, _ []string) error {
		q := url.Values{}
		if status != "" {
			q.Set("status", status)
		}
		if limit != 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		var items []admin.OutboxView
		if err := c.call(ctx, "GET", "/api/v1/outbox?"+q.Encode(), nil, &items); err != nil {
			return err
		}
		if f.json {
			return printJSON(stdout, items)
		}
		tw := table(stdout, "ID", "CREATED", "STATUS", "ATTEMPTS", "NEXT", "SIZE", "TO", "TRACE", "LAST ERROR")
		for _, it := range items {
			row(tw, it.ID, stamp(&it.Created), it.Status, strconv.Itoa(it.Attempts), stamp(it.NextAttempt),
				strconv.Itoa(it.Size), strings.Join(it.Recipients, ","), it.TraceID, it.LastError)
		}
		return tw.Flush()
	})
}

func traceCmd(args []string, stdout, stderr io.Writer) int {
	return adminCommand("trace", args, 1, stdout, stderr, nil, func(ctx context.Context, c *apiClient, _ *adminFlags, pos []string) error {
		var tv admin.TraceView
		if err := c.call(ctx, "GET", "/api/v1/trace/"+url.PathEscape(pos[0]), nil, &tv); err != nil {
			return err
		}
		// The records are JSON either way.
		return printJSON(stdout, tv)
	})
}

func printPreferences(w io.Writer, ps []admin.PreferenceView) {
	tw := table(w, "ID", "RECIPIENT", "SENDER", "KIND", "SERVICES", "EXPIRES", "BY", "NOTE")
	for _, p := range ps {
		services := strings.Join(p.Services, ",")
		if services == "" {
			services = "(all bypassable)"
		}
		sender := p.Sender
		if sender == "" {
			sender = "(any)"
		}
		exp := stamp(p.Expires)
		if exp == "-" {
			exp = "never"
		}
		row(tw, p.ID, p.Recipient, sender, p.Kind, services, exp, p.CreatedBy, p.Note)
	}
	_ = tw.Flush()
}

func printQuarantine(w io.Writer, it admin.QuarantineView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	kv := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, clean(v)) }
	kv("id", it.ID)
	kv("status", it.Status)
	if it.StatusBy != "" {
		kv("status by", it.StatusBy+" at "+stamp(it.StatusAt))
	}
	kv("trace id", it.TraceID)
	kv("queue id", it.QueueID)
	kv("sender", orNull(it.Sender))
	kv("recipients", strings.Join(it.Recipients, ", "))
	kv("reason", it.Reason)
	kv("service", it.Service)
	kv("bypassable", strconv.FormatBool(it.Bypassable))
	kv("size", strconv.FormatInt(it.Size, 10))
	kv("created", stamp(&it.Created))
	kv("expires", stamp(it.Expires))
	_ = tw.Flush()
}

func table(w io.Writer, cols ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	return tw
}

func row(tw *tabwriter.Writer, cells ...string) {
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		cells[i] = clean(c)
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

// clean keeps data from the store (addresses, notes, SMTP errors) from
// steering the terminal or breaking the table.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) { // tab included
			return '?'
		}
		return r
	}, s)
}

func stamp(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04Z")
}

func orNull(sender string) string {
	if sender == "" {
		return "<>"
	}
	return sender
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
