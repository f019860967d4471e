package checks

import (
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"
)

// zoneReply is how the test DNS server answers names under a zone.
type zoneReply struct {
	a        map[string][4]byte // name (lower case, no trailing dot) -> A record; others NXDOMAIN
	silent   bool               // never answer
	servfail bool
}

// dnsServer is a minimal authoritative UDP responder for A queries, with
// hand-encoded messages (RFC 1035 §4), so the lookups run through the
// real Go resolver and a real socket.
type dnsServer struct {
	addr  string
	zones map[string]zoneReply
	mu    sync.Mutex
	asked []string
}

func startDNS(t *testing.T, zones map[string]zoneReply) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String(), zones: zones}
	t.Cleanup(func() { pc.Close() })
	go s.serve(pc)
	return s
}

func (s *dnsServer) queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

func (s *dnsServer) serve(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			_, _ = pc.WriteTo(resp, from)
		}
	}
}

// answer builds the response to query q, or nil to stay silent.
func (s *dnsServer) answer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	// Question: labels, then QTYPE and QCLASS.
	var labels []string
	i := 12
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i:])
	question := q[12 : i+4]
	name := strings.ToLower(strings.Join(labels, "."))
	s.mu.Lock()
	s.asked = append(s.asked, name)
	s.mu.Unlock()

	var zone zoneReply
	found := false
	for z, r := range s.zones {
		if strings.HasSuffix(name, "."+z) {
			zone, found = r, true
		}
	}
	rcode := uint16(3) // NXDOMAIN
	var answer []byte
	switch {
	case !found:
		rcode = 5 // REFUSED
	case zone.silent:
		return nil
	case zone.servfail:
		rcode = 2
	default:
		if ip, ok := zone.a[name]; ok {
			rcode = 0
			if qtype == 1 {
				answer = []byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ip[0], ip[1], ip[2], ip[3]}
			}
		}
	}
	resp := make([]byte, 12, 12+len(question)+len(answer))
	copy(resp, q[:2]) // ID
	flags := uint16(0x8000|0x0400|0x0080) | binary.BigEndian.Uint16(q[2:])&0x0100 | rcode
	binary.BigEndian.PutUint16(resp[2:], flags)
	binary.BigEndian.PutUint16(resp[4:], 1)
	if answer != nil {
		binary.BigEndian.PutUint16(resp[6:], 1)
	}
	resp = append(resp, question...)
	return append(resp, answer...)
}
