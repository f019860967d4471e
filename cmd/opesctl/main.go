// Command opesctl checks opes-milter policies, shows what they do to a
// message without an MTA, and manages a running daemon's out-of-band
// bypass preferences, quarantine and report outbox through its admin API.
//
//	opesctl check -config FILE
//	opesctl explain -config FILE -from ADDR -rcpt ADDR [-rcpt ADDR ...]
//	        [-client IP] [-helo NAME] [-auth USER] [-queue-id ID] MESSAGE.eml
//
// check exits 0 for a valid file and 1 with file:line:column errors.
// explain runs the processor stage by stage exactly as the milter would,
// prints each stage's answer (full reply text for refusals), then the
// header block as it would be delivered, trace fields included. It exits
// 0 when the message would be delivered, 3 when it would be refused, 1 on
// errors.
//
//	opesctl bypass add|list|remove ...
//	opesctl quarantine list|show|message|release|delete ...
//	opesctl outbox list
//	opesctl trace ID
//
// talk to the daemon's admin API (-admin URL, -token-file FILE); they exit
// 0 on success, 1 on errors and 2 on usage errors.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/policy"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  opesctl check -config FILE
  opesctl explain [-config FILE] -from ADDR -rcpt ADDR [-rcpt ADDR ...] [-client IP] [-helo NAME] [-auth USER] [-queue-id ID] MESSAGE.eml
` + adminUsage

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "check":
		return check(args[1:], stdout, stderr)
	case "explain":
		return explain(args[1:], stdout, stderr)
	case "bypass":
		return bypassCmd(args[1:], stdout, stderr)
	case "quarantine":
		return quarantineCmd(args[1:], stdout, stderr)
	case "outbox":
		return outboxCmd(args[1:], stdout, stderr)
	case "trace":
		return traceCmd(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "opesctl: unknown command %q\n%s\n", args[0], usage)
	return 2
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "policy file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "opesctl check: -config is required")
		return 2
	}
	cfg, err := policy.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if _, err := opes.NewProcessor(cfg.Policy, nil); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", *path, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%s, %s; MTA stages needed: %s)\n", *path,
		plural(len(cfg.Policy.Services), "service"), plural(len(cfg.Policy.Rules), "rule"), cfg.Policy.Needs().Stages)
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stdout, "%s: warning: %s\n", *path, w)
	}
	return 0
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func explain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "policy file; empty = embedded default")
	from := fs.String("from", "", "envelope sender (empty = null reverse-path)")
	var rcpts listFlag
	fs.Var(&rcpts, "rcpt", "envelope recipient (repeatable)")
	client := fs.String("client", "192.0.2.1", "client IP address")
	clientName := fs.String("client-name", "", "client host name as the MTA reports it (default [IP])")
	helo := fs.String("helo", "client.example", "HELO/EHLO name")
	auth := fs.String("auth", "", "SMTP AUTH login name")
	tls := fs.Bool("tls", false, "pretend the session uses TLS")
	queueID := fs.String("queue-id", "", "MTA queue id (default: a generated trace id)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if len(rcpts) == 0 || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "opesctl explain: need at least one -rcpt and one message file")
		return 2
	}
	var cfg *policy.Config
	var err error
	if *path == "" {
		cfg = policy.Default()
	} else if cfg, err = policy.Load(*path); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	proc, err := opes.NewProcessor(cfg.Policy, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "opesctl explain:", err)
		return 1
	}
	defer f.Close()
	msg := bufio.NewReader(f)
	hdr, err := textproto.ReadHeader(msg)
	if err != nil {
		fmt.Fprintf(stderr, "opesctl explain: %s: %v\n", fs.Arg(0), err)
		return 1
	}
	addr, err := netip.ParseAddr(*client)
	if err != nil {
		fmt.Fprintf(stderr, "opesctl explain: -client: %v\n", err)
		return 2
	}
	e := &explainer{out: stdout, sess: proc.NewSession()}
	defer e.sess.Close()
	c := e.sess.Conn()
	c.Addr, c.Family, c.Hostname = addr, "tcp4", *clientName
	if addr.Is6() {
		c.Family = "tcp6"
	}
	if c.Hostname == "" {
		c.Hostname = "[" + addr.String() + "]"
	}
	c.AuthUser = *auth
	if *auth != "" {
		c.AuthType = "PLAIN"
	}
	if *tls {
		c.TLSVersion, c.Cipher = "TLSv1.3", "TLS_AES_256_GCM_SHA384"
	}
	ctx := context.Background()
	if !e.step("connect "+addr.String(), e.sess.Connect(ctx)) ||
		!e.step("helo "+*helo, e.sess.Helo(ctx, *helo)) ||
		!e.step("mail <"+*from+">", e.sess.Mail(ctx, opes.Address{Addr: *from})) {
		return 3
	}
	// As with Sendmail, the queue id is known from MAIL on (Postfix tells
	// it only after the first accepted RCPT).
	e.sess.SetQueueID(*queueID)
	accepted := 0
	for _, r := range rcpts {
		if e.step("rcpt <"+r+">", e.sess.Rcpt(ctx, opes.Address{Addr: r})) {
			accepted++
		}
	}
	if accepted == 0 {
		fmt.Fprintln(stdout, "no recipient accepted: the MTA ends the transaction here")
		return 3
	}
	if !e.step("data", e.sess.Data(ctx)) {
		return 3
	}
	var original []opes.HeaderField
	fields := hdr.Fields()
	for fields.Next() {
		name, value := fieldRaw(fields)
		original = append(original, opes.HeaderField{Name: name, Value: value})
		e.sess.Header(name, value)
	}
	if !e.step("headers", e.sess.EndOfHeaders(ctx)) {
		return 3
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := msg.Read(buf)
		if n > 0 {
			if o := e.sess.BodyChunk(buf[:n]); o != nil {
				e.step("body", o)
				return 3
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			fmt.Fprintln(stderr, "opesctl explain:", rerr)
			return 1
		}
	}
	o := e.sess.EndOfMessage(ctx, *queueID)
	if !e.step("eom", o) {
		return 3
	}
	fmt.Fprintf(stdout, "delivered: trace id %s", o.TraceID)
	if o.Quarantine != "" {
		fmt.Fprintf(stdout, ", quarantined (%s)", o.Quarantine)
	}
	for _, r := range o.DelRcpts {
		fmt.Fprintf(stdout, ", recipient removed <%s>", r)
	}
	for _, r := range o.AddRcpts {
		fmt.Fprintf(stdout, ", recipient added <%s>", r.Addr)
	}
	if o.Sender != nil {
		fmt.Fprintf(stdout, ", sender changed to <%s>", o.Sender.Addr)
	}
	if o.Body != nil {
		fmt.Fprint(stdout, ", body replaced")
	}
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, "--- header as delivered ---")
	fmt.Fprint(stdout, strings.ReplaceAll(opes.FormatHeader(opes.ApplyChanges(original, o.HeaderChanges)), "\r\n", "\n"))
	return 0
}

// fieldRaw returns the field name and the value as an MTA passes it with
// SMFIP_HDR_LEADSPC: everything after the colon, folding kept.
func fieldRaw(fields textproto.HeaderFields) (string, string) {
	raw, err := fields.Raw()
	if err != nil {
		return fields.Key(), " " + fields.Value()
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
	name, value, _ := strings.Cut(s, ":")
	return name, value
}

type explainer struct {
	out  io.Writer
	sess *opes.Session
}

// step prints one stage's answer and reports whether the dialog goes on.
func (e *explainer) step(what string, o *opes.Outcome) bool {
	if o.Kind == opes.Reject || o.Kind == opes.TempFail {
		fmt.Fprintf(e.out, "%s: %s\n", what, o.Kind)
		for _, l := range strings.Split(o.Reply.String(), "\r\n") {
			fmt.Fprintf(e.out, "    %s\n", l)
		}
		return false
	}
	fmt.Fprintf(e.out, "%s: continue\n", what)
	return true
}
