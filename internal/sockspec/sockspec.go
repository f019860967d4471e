// Package sockspec reads the socket specifications milters are configured
// with, so that opes-milter accepts the same strings as libmilter and
// Postfix and an administrator can copy them between the MTA's
// configuration and ours.
//
// Accepted forms:
//
//	inet:PORT@HOST        libmilter; HOST is a name or an IPv4 address
//	inet:PORT             libmilter form without host; listens on 127.0.0.1
//	inet:HOST:PORT        Postfix (smtpd_milters); HOST may be [IPv6]
//	inet6:PORT@[ADDR]     libmilter; ADDR is an IPv6 address or a name
//	inet6:PORT@ADDR
//	inet6:PORT            listens on ::1
//	unix:/abs/path        Unix-domain socket
//	local:/abs/path       libmilter's synonym for unix
//	/abs/path             libmilter treats a bare path as unix
//
// Unlike libmilter, an address without a host means loopback, not every
// interface: a milter sees whole messages and must not be reachable from
// the network by accident.
package sockspec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// maxUnixPath is the longest socket path Linux can bind: sun_path holds
// 108 bytes including the terminating NUL.
const maxUnixPath = 107

// Parse turns a socket specification into arguments for net.Listen or
// net.Dial: network is "tcp4", "tcp6" or "unix".
func Parse(spec string) (network, address string, err error) {
	network, address, err = parse(spec)
	if err != nil {
		return "", "", fmt.Errorf("socket %q: %w", spec, err)
	}
	return network, address, nil
}

func parse(spec string) (string, string, error) {
	if spec == "" {
		return "", "", errors.New("empty socket specification")
	}
	for i := 0; i < len(spec); i++ {
		if c := spec[i]; c < 0x20 || c == 0x7f {
			return "", "", fmt.Errorf("control character 0x%02x", c)
		}
	}
	if strings.HasPrefix(spec, "/") {
		return parseUnix(spec)
	}
	proto, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return "", "", errors.New(`missing protocol: want "inet:PORT@HOST", "inet6:PORT@HOST" or "unix:/path"`)
	}
	switch strings.ToLower(proto) {
	case "unix", "local":
		return parseUnix(rest)
	case "inet":
		return parseInet(rest)
	case "inet6":
		return parseInet6(rest)
	}
	return "", "", fmt.Errorf("unknown protocol %q (want inet, inet6, unix or local)", proto)
}

func parseUnix(path string) (string, string, error) {
	switch {
	case path == "":
		return "", "", errors.New("missing socket path")
	case !strings.HasPrefix(path, "/"):
		// A relative path would depend on the daemon's working directory,
		// which differs between a shell and a service manager.
		return "", "", fmt.Errorf("socket path %q is not absolute", path)
	case len(path) > maxUnixPath:
		return "", "", fmt.Errorf("socket path is longer than %d bytes", maxUnixPath)
	case strings.HasSuffix(path, "/"):
		return "", "", fmt.Errorf("socket path %q names a directory", path)
	}
	return "unix", path, nil
}

func parseInet(rest string) (string, string, error) {
	var host, port string
	if p, h, ok := strings.Cut(rest, "@"); ok {
		port, host = p, h
		if host == "" {
			return "", "", errors.New("missing host after '@'")
		}
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		// Postfix: inet:host:port, the host possibly a bracketed IPv6
		// address.
		host, port = rest[:i], rest[i+1:]
		if host == "" {
			return "", "", errors.New("missing host before ':'")
		}
	} else {
		port, host = rest, "127.0.0.1"
	}
	p, err := parsePort(port)
	if err != nil {
		return "", "", err
	}
	if strings.HasPrefix(host, "[") {
		a, err := bracketed(host)
		if err != nil {
			return "", "", err
		}
		return "tcp6", net.JoinHostPort(a, p), nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is6() && !a.Is4In6() {
			return "", "", fmt.Errorf("IPv6 address %s needs inet6:PORT@[ADDR]", host)
		}
		return "tcp4", net.JoinHostPort(a.Unmap().String(), p), nil
	}
	if err := checkHostname(host); err != nil {
		return "", "", err
	}
	return "tcp4", net.JoinHostPort(host, p), nil
}

func parseInet6(rest string) (string, string, error) {
	port, host, ok := strings.Cut(rest, "@")
	if !ok {
		host = "::1"
	} else if host == "" {
		return "", "", errors.New("missing host after '@'")
	}
	p, err := parsePort(port)
	if err != nil {
		return "", "", err
	}
	if strings.HasPrefix(host, "[") {
		a, err := bracketed(host)
		if err != nil {
			return "", "", err
		}
		return "tcp6", net.JoinHostPort(a, p), nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return "tcp6", net.JoinHostPort(a.String(), p), nil
	}
	if strings.Contains(host, ":") {
		return "", "", fmt.Errorf("bad IPv6 address %q", host)
	}
	if err := checkHostname(host); err != nil {
		return "", "", err
	}
	return "tcp6", net.JoinHostPort(host, p), nil
}

// bracketed parses "[IPv6]".
func bracketed(host string) (string, error) {
	if len(host) < 2 || host[len(host)-1] != ']' {
		return "", fmt.Errorf("unterminated '[' in host %q", host)
	}
	a, err := netip.ParseAddr(host[1 : len(host)-1])
	if err != nil || !a.Is6() {
		return "", fmt.Errorf("bad IPv6 address %q", host)
	}
	return a.String(), nil
}

// parsePort accepts a decimal port 1-65535. Service names are refused:
// their meaning depends on /etc/services of the machine.
func parsePort(s string) (string, error) {
	if s == "" {
		return "", errors.New("missing port")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "", fmt.Errorf("port %q is not a number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %s out of range 1-65535", s)
	}
	return strconv.Itoa(n), nil
}

// checkHostname accepts RFC 1123 host names.
func checkHostname(h string) error {
	if len(h) > 253 {
		return errors.New("host name longer than 253 bytes")
	}
	name := strings.TrimSuffix(h, ".")
	if name == "" {
		return fmt.Errorf("bad host name %q", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("bad host name %q", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("bad host name %q", h)
			}
		}
	}
	return nil
}

// IsLoopback reports whether a listener on spec is reachable from this
// host only: a Unix-domain socket, a loopback address, or the name
// "localhost". Other names are not resolved and count as not loopback, as
// does an invalid spec.
func IsLoopback(spec string) bool {
	network, address, err := Parse(spec)
	if err != nil {
		return false
	}
	if network == "unix" {
		return true
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
