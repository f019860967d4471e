package load

import (
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// tagger adds one header field at the end of the message; reject refuses
// there instead; silent accepts without adding anything.
type tagger struct{ gomilter.NoOpMilter }

func (tagger) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	if err := m.AddHeader("X-Test", "1"); err != nil {
		return nil, err
	}
	return gomilter.RespAccept, nil
}

type rejecter struct{ gomilter.NoOpMilter }

func (rejecter) EndOfMessage(gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespReject, nil
}

type silent struct{ gomilter.NoOpMilter }

// serve starts a go-milter server on a unix socket in a temp dir; it asks
// for every stage, so the driver's whole transaction goes over the wire.
func serve(t *testing.T, m func() gomilter.Milter) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "m.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := gomilter.NewServer(gomilter.WithMilter(m), gomilter.WithAction(gomilter.OptAddHeader))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func TestRunCountsMessagesAndLatencies(t *testing.T) {
	sock := serve(t, func() gomilter.Milter { return tagger{} })
	for _, perConn := range []int{1, 7} {
		res, err := Run(context.Background(), Config{Network: "unix", Address: sock, Sessions: 4, PerConn: perConn,
			Messages: 60, Duration: 30 * time.Second, Message: Plain(10 << 10), WantHeader: true, PIDs: []int{os.Getpid()}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Messages != 60 || res.Failed != 0 || len(res.Latencies) != 60 {
			t.Fatalf("per conn %d: %d ok, %d failed (%s), %d latencies; want 60, 0, 60", perConn, res.Messages, res.Failed, res.FirstError, len(res.Latencies))
		}
		if p50, p99 := res.Percentile(0.5), res.Percentile(0.99); p50 <= 0 || p99 < p50 || p99 > res.Latencies[59] {
			t.Fatalf("percentiles p50 %v p99 %v max %v", p50, p99, res.Latencies[59])
		}
		if res.Rate() <= 0 || res.CPU < 0 || res.CPUPerMessage() < 0 {
			t.Fatalf("rate %v, cpu %v: the server runs in this process, its CPU must be measured", res.Rate(), res.CPU)
		}
	}
}

func TestRunCountsRefusalsAndMissingHeaders(t *testing.T) {
	for name, m := range map[string]func() gomilter.Milter{
		"reject": func() gomilter.Milter { return rejecter{} },
		"silent": func() gomilter.Milter { return silent{} },
	} {
		sock := serve(t, m)
		res, err := Run(context.Background(), Config{Network: "unix", Address: sock, Sessions: 2, Messages: 10,
			Message: Plain(1 << 10), WantHeader: true})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"reject": "not accepted", "silent": "without adding a header"}[name]
		if res.Messages != 0 || res.Failed != 10 || !strings.Contains(res.FirstError, want) {
			t.Fatalf("%s: %d ok, %d failed, first %q; want 0, 10, %q", name, res.Messages, res.Failed, res.FirstError, want)
		}
		if res.CPU != -1 || res.CPUPerMessage() != -1 {
			t.Fatalf("%s: CPU %v without PIDs, want -1", name, res.CPU)
		}
	}
}

func TestRunStopsAtDuration(t *testing.T) {
	sock := serve(t, func() gomilter.Milter { return tagger{} })
	start := time.Now()
	res, err := Run(context.Background(), Config{Network: "unix", Address: sock, Sessions: 2, PerConn: 100,
		Duration: 300 * time.Millisecond, Message: Plain(1 << 10), WantHeader: true})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second || res.Messages == 0 || res.Failed != 0 {
		t.Fatalf("took %v, %d ok, %d failed (%s)", took, res.Messages, res.Failed, res.FirstError)
	}
}

func TestRunRefusesBadConfigAndDeadMilter(t *testing.T) {
	dead := filepath.Join(t.TempDir(), "none.sock")
	for name, cfg := range map[string]Config{
		"no message": {Network: "unix", Address: dead, Messages: 1},
		"no bound":   {Network: "unix", Address: dead, Message: Plain(1 << 10)},
		"dead":       {Network: "unix", Address: dead, Messages: 1, Message: Plain(1 << 10)},
	} {
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestMessages(t *testing.T) {
	if p := Plain(10 << 10); p.Size() < 10<<10 || p.Size() > 11<<10 || !strings.HasSuffix(string(p.Body), "\r\n") {
		t.Fatalf("plain: %d octets", p.Size())
	}
	m := Multipart(170 << 10)
	if m.Size() < 240<<10 || m.Size() > 265<<10 {
		t.Fatalf("multipart: %d octets, want ~250 KiB", m.Size())
	}
	var ct string
	for _, f := range m.Header {
		if f.Name == "Content-Type" {
			ct = f.Value
		}
	}
	_, params, err := mime.ParseMediaType(ct)
	if err != nil {
		t.Fatal(err)
	}
	// walk the parts: multipart/alternative (text, html), PDF, PNG
	var leaves []string
	var walk func(r io.Reader, boundary string)
	walk = func(r io.Reader, boundary string) {
		mr := multipart.NewReader(r, boundary)
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			typ, ps, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if strings.HasPrefix(typ, "multipart/") {
				walk(p, ps["boundary"])
				continue
			}
			if _, err := io.Copy(io.Discard, p); err != nil {
				t.Fatal(err)
			}
			leaves = append(leaves, typ+" "+p.FileName())
		}
	}
	walk(strings.NewReader(string(m.Body)), params["boundary"])
	want := "text/plain |text/html |application/pdf report.pdf|image/png photo.png"
	if got := strings.Join(leaves, "|"); got != want {
		t.Fatalf("parts %q, want %q", got, want)
	}
}

func TestProcFigures(t *testing.T) {
	if c := ProcCPU(os.Getpid()); c < 0 {
		t.Fatalf("own CPU %v", c)
	}
	if ProcCPU(-1) != -1 {
		t.Fatal("CPU of no process should be -1")
	}
	// RSS first: the peak read after it is at least as large, whatever
	// the runtime allocated in between.
	rss, err := RSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	peak, err := PeakRSS(os.Getpid())
	if err != nil || peak <= 0 {
		t.Fatalf("peak RSS %d, %v", peak, err)
	}
	if rss <= 0 || rss > peak {
		t.Fatalf("RSS %d (peak %d), %v", rss, peak, err)
	}
	if _, err := PeakRSS(-1); err == nil {
		t.Fatal("no error for a missing process")
	}
}

func TestSchedOf(t *testing.T) {
	before, err := SchedOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Sleeping puts a thread to sleep in the kernel (a voluntary switch
	// each time); spinning costs CPU the clock ticks can see.
	for range 20 {
		time.Sleep(time.Millisecond)
	}
	for start := time.Now(); time.Since(start) < 60*time.Millisecond; {
	}
	after, err := SchedOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	if d.Switches < 20 {
		t.Errorf("%d context switches over 20 sleeps", d.Switches)
	}
	if d.User+d.System < 10*time.Millisecond {
		t.Errorf("CPU %v over 60 ms of spinning", d.User+d.System)
	}
	if _, err := SchedOf(-1); err == nil {
		t.Fatal("no error for a missing process")
	}
}
