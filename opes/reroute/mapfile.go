package reroute

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Bounds on a map file, as for opes/match's lookup lists: a mistaken path
// (a log, a mailbox) must not eat the daemon's memory at reload.
const (
	maxMapBytes   = 64 << 20
	maxMapEntries = 1 << 20
)

// MapFile is a directory read from a text file of "key value" lines:
//
//	joe@example.org   joe@de.example.org          # this address
//	@example.com      @example.org                # every user of a domain
//	postmaster@       hostmaster@example.org      # this user in any domain
//	ann@example.org   [mx-de.example.net]         # next hop only
//	bob@example.org   bob@example.net [relay:25]  # both
//
// Keys are matched case-insensitively, a full address first, then
// "user@", then "@domain" (the order of Postfix's virtual tables). A
// value "@domain" keeps the local part of the address looked up. '#'
// starts a comment. The file is read once, when the policy is loaded, so
// SIGHUP (which reloads the policy) rereads it.
type MapFile struct {
	path   string
	exact  map[string]mapValue // "joe@example.org"
	local  map[string]mapValue // "joe" from "joe@"
	domain map[string]mapValue // "example.org" from "@example.org"
}

type mapValue struct {
	addr   string // full address, or "@domain" to keep the local part
	hop    string
	line   int
	probes string // an address whose lookup starts at this entry
}

// LoadMapFile reads and checks a map file. Errors name the file and line.
func LoadMapFile(path string) (*MapFile, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%q is not an absolute path", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := &MapFile{path: path, exact: map[string]mapValue{}, local: map[string]mapValue{}, domain: map[string]mapValue{}}
	sc := bufio.NewScanner(io.LimitReader(f, maxMapBytes+1))
	sc.Buffer(make([]byte, 4096), 4096)
	n, read, entries := 0, 0, 0
	for sc.Scan() {
		n++
		read += len(sc.Bytes()) + 1
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if entries++; entries > maxMapEntries {
			return nil, fmt.Errorf("%s: more than %d entries", path, maxMapEntries)
		}
		if err := m.addLine(fields, n); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, n+1, err)
	}
	if read > maxMapBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxMapBytes)
	}
	return m, nil
}

func (m *MapFile) addLine(fields []string, line int) error {
	if len(fields) < 2 || len(fields) > 3 {
		return fmt.Errorf("want \"key address\", \"key [next-hop]\" or \"key address [next-hop]\", found %d fields", len(fields))
	}
	key := strings.ToLower(fields[0])
	v := mapValue{line: line}
	for _, f := range fields[1:] {
		if strings.HasPrefix(f, "[") {
			if v.hop != "" {
				return fmt.Errorf("two next hops")
			}
			hop, err := normalizeNextHop(f)
			if err != nil {
				return err
			}
			v.hop = hop
			continue
		}
		if v.addr != "" {
			return fmt.Errorf("two addresses (a next hop is written in brackets: [host])")
		}
		if strings.HasPrefix(f, "@") {
			if err := checkAddress("x" + f); err != nil {
				return fmt.Errorf("value %q: %w", f, err)
			}
		} else if err := checkAddress(f); err != nil {
			return fmt.Errorf("value: %w", err)
		}
		v.addr = f
	}
	var table map[string]mapValue
	switch at := strings.LastIndexByte(key, '@'); {
	case at < 0:
		return fmt.Errorf("key %q: want user@domain, user@ or @domain", fields[0])
	case at == 0:
		if err := checkAddress("x" + key); err != nil {
			return fmt.Errorf("key: %w", err)
		}
		table, key, v.probes = m.domain, key[1:], "opes-probe"+key
	case at == len(key)-1:
		if err := checkAddress(key + "opes-probe.invalid"); err != nil {
			return fmt.Errorf("key: %w", err)
		}
		table, key, v.probes = m.local, key[:at], key+"opes-probe.invalid"
	default:
		if err := checkAddress(key); err != nil {
			return fmt.Errorf("key: %w", err)
		}
		table, v.probes = m.exact, key
	}
	if prev, dup := table[key]; dup {
		return fmt.Errorf("key %q is already defined on line %d", fields[0], prev.line)
	}
	table[key] = v
	return nil
}

// Len is the number of entries.
func (m *MapFile) Len() int { return len(m.exact) + len(m.local) + len(m.domain) }

// Lookup implements Directory; it never fails.
func (m *MapFile) Lookup(_ context.Context, addr string) (Entry, bool, error) {
	v, ok := m.find(addr)
	if !ok {
		return Entry{}, false, nil
	}
	e := Entry{Address: v.addr, NextHop: v.hop}
	if strings.HasPrefix(v.addr, "@") {
		e.Address = addr[:strings.LastIndexByte(addr, '@')] + v.addr
	}
	return e, true, nil
}

func (m *MapFile) find(addr string) (mapValue, bool) {
	lower := strings.ToLower(addr)
	if v, ok := m.exact[lower]; ok {
		return v, true
	}
	at := strings.LastIndexByte(lower, '@')
	if at < 0 {
		return mapValue{}, false
	}
	if v, ok := m.local[lower[:at]]; ok {
		return v, true
	}
	v, ok := m.domain[lower[at+1:]]
	return v, ok
}

// checkChains resolves one address through every entry so that a loop or
// an overlong chain is a configuration error at load, with its line, and
// not a tempfail for the first message that meets it.
func (m *MapFile) checkChains(maxHops int) error {
	var all []mapValue
	for _, table := range []map[string]mapValue{m.exact, m.local, m.domain} {
		for _, v := range table {
			all = append(all, v)
		}
	}
	// File order, so the error names the first line of a loop.
	slices.SortFunc(all, func(a, b mapValue) int { return a.line - b.line })
	for _, v := range all {
		_, err := resolve(context.Background(), []Directory{m}, v.probes, maxHops)
		if errors.Is(err, errLoop) || errors.Is(err, errTooDeep) {
			return fmt.Errorf("%s:%d: %w", m.path, v.line, err)
		}
	}
	return nil
}
