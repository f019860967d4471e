package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminListener: health, readiness and metrics of a daemon that
// Postfix is using, and the reload outcome as a metric.
func TestAdminListener(t *testing.T) {
	t.Parallel()
	adminAddr := FreeAddr(t)
	policy := "[system]\nuri = \"" + itSystem + "\"\n[admin]\nlisten = \"" + adminAddr + "\"\n"
	sink, m, pf := mta(t, MilterOptions{Policy: policy})
	base := "http://" + adminAddr

	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	for i := range 3 {
		subject := fmt.Sprintf("metrics-%d", i)
		if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message(subject)); !tr.Accepted() {
			t.Fatalf("not accepted:\n%s", tr)
		}
		sink.WaitDump(t, HasHeader("Subject", subject), 10*time.Second)
	}
	_, body := httpGet(t, base+"/metrics")
	if !strings.Contains(body, `opes_milter_outcomes_total{stage="eom",verdict="accept"} 3`) {
		t.Errorf("three delivered messages not counted:\n%s", grepLines(body, "opes_milter_"))
	}

	if err := os.WriteFile(m.ConfigPath(), []byte("[system]\nuri = \"nope\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m.WaitLog(t, "reload refused", 5*time.Second)
	_, body = httpGet(t, base+"/metrics")
	for _, want := range []string{`opes_milter_config_reloads_total{result="error"} 1`, "opes_milter_config_last_reload_successful 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("missing %q:\n%s", want, grepLines(body, "opes_milter_config"))
		}
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
