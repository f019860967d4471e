package enginetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/child"
)

// OpenDKIMAptHint installs the milter the child-milter tests drive.
const OpenDKIMAptHint = "apt-get install -y --no-install-recommends opendkim (started by the tests, never as a system service)"

// DKIMKey is a signing key and the TXT record that publishes it.
type DKIMKey struct {
	Key     *rsa.PrivateKey
	PEMFile string
	TXT     string
}

// NewDKIMKey writes a fresh 2048-bit RSA key as PEM into dir, the way
// opendkim-genkey does, and returns it with the matching DNS record.
func NewDKIMKey(dir string) (DKIMKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return DKIMKey{}, err
	}
	path := filepath.Join(dir, "test.private")
	block := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	if err := os.WriteFile(path, block, 0o600); err != nil {
		return DKIMKey{}, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return DKIMKey{}, err
	}
	return DKIMKey{Key: k, PEMFile: path, TXT: "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)}, nil
}

// OpenDKIMOptions configures StartOpenDKIM.
type OpenDKIMOptions struct {
	Dir  string   // working directory (short: it holds the unix socket)
	Conf []string // opendkim.conf lines, without Socket and process settings
	Inet bool     // listen on a free loopback port instead of a unix socket
}

// OpenDKIM is a running opendkim in the foreground.
type OpenDKIM struct {
	// Socket is its address in Postfix/opes syntax: "unix:/path" or
	// "inet:PORT@127.0.0.1".
	Socket string
	dir    string
	proc   *child.Process
}

// StartOpenDKIM runs Debian's opendkim with o.Conf and waits until it
// accepts connections (bounded at 10 s).
func StartOpenDKIM(o OpenDKIMOptions) (*OpenDKIM, error) {
	bin, err := LookBin("opendkim", OpenDKIMAptHint)
	if err != nil {
		return nil, err
	}
	d := &OpenDKIM{dir: o.Dir}
	var listen, network, address string
	if o.Inet {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		listen = fmt.Sprintf("inet:%d@127.0.0.1", port)
		d.Socket, network, address = listen, "tcp", fmt.Sprintf("127.0.0.1:%d", port)
	} else {
		sock := filepath.Join(o.Dir, "opendkim.sock")
		listen, d.Socket, network, address = "local:"+sock, "unix:"+sock, "unix", sock
	}
	conf := append(append([]string(nil), o.Conf...),
		"Socket "+listen,
		"Background no",
		"Syslog no",
		"PidFile "+filepath.Join(o.Dir, "opendkim.pid"),
		// The key lives under /tmp, which every user can write; a real
		// installation keeps it in /etc/dkimkeys.
		"RequireSafeKeys no",
		"UMask 007",
	)
	cfg := filepath.Join(o.Dir, "opendkim.conf")
	if err := os.WriteFile(cfg, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-f", "-x", cfg)
	dieWithParent(cmd)
	if d.proc, err = child.Start(cmd, filepath.Join(o.Dir, "opendkim.out")); err != nil {
		return nil, err
	}
	if err := d.proc.WaitDial(network, address, 10*time.Second, nil); err != nil {
		d.Stop()
		return nil, fmt.Errorf("opendkim: %w", err)
	}
	return d, nil
}

// Stop kills opendkim: libmilter takes seconds to act on SIGTERM, and
// nothing of its state is worth keeping.
func (d *OpenDKIM) Stop() { d.proc.Kill() }

// Logs returns what opendkim printed.
func (d *OpenDKIM) Logs() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "opendkim.out"))
	return string(b)
}

// OpenDKIMTestMode runs the OpenDKIM filter in its test mode (opendkim
// -t: the milter code path over a message file, without an MTA) with a key
// made by opendkim-genkey for example.org, selector "sel".
type OpenDKIMTestMode struct {
	bin, dir string
	KeyFile  string // sel.private from opendkim-genkey
	TXT      string // its DNS record, joined
}

// NewOpenDKIMTestMode makes the key in dir; the error names the missing
// package when opendkim or opendkim-genkey is absent.
func NewOpenDKIMTestMode(dir string) (*OpenDKIMTestMode, error) {
	bin, err := LookBin("opendkim", OpenDKIMAptHint)
	if err != nil {
		return nil, err
	}
	genkey, err := LookBin("opendkim-genkey", "apt-get install -y --no-install-recommends opendkim-tools")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, genkey, "-b", "2048", "-d", "example.org", "-s", "sel", "-D", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("opendkim-genkey: %v\n%s", err, out)
	}
	rec, err := os.ReadFile(filepath.Join(dir, "sel.txt"))
	if err != nil {
		return nil, err
	}
	o := &OpenDKIMTestMode{bin: bin, dir: dir, KeyFile: filepath.Join(dir, "sel.private")}
	// sel._domainkey IN TXT ( "v=DKIM1; ..." "p=..." "..." ) ; comment
	for _, m := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(string(rec), -1) {
		o.TXT += m[1]
	}
	return o, nil
}

// Dir is the directory of the key and of the files Filter writes.
func (o *OpenDKIMTestMode) Dir() string { return o.dir }

// Filter runs opendkim -t over msg with the configuration lines conf
// (Syslog and RequireSafeKeys are added) and returns its verbose output.
func (o *OpenDKIMTestMode) Filter(conf, msg string) (string, error) {
	confPath, msgPath := filepath.Join(o.dir, "opendkim.conf"), filepath.Join(o.dir, "msg.eml")
	conf += "Syslog no\nRequireSafeKeys no\n"
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(msgPath, []byte(msg), 0o600); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, o.bin, "-x", confPath, "-t", msgPath, "-vvv").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("opendkim -t: %v\n%s", err, out)
	}
	return string(out), nil
}
