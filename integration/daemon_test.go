package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/sysmon"
)

// TestDaemonRuntimeSetting: the daemon re-executes itself with the
// GODEBUG entry that keeps the runtime's monitor thread polling
// (internal/sysmon), keeps its process id (what an init system and the
// MTA's tests rely on) and still serves; an operator's own schedtrace
// stands.
func TestDaemonRuntimeSetting(t *testing.T) {
	for _, tt := range []struct {
		env, want string
	}{
		{"", "GODEBUG=" + sysmon.Setting},
		{"GODEBUG=schedtrace=0", "GODEBUG=schedtrace=0"},
	} {
		t.Run(tt.want, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("GODEBUG", strings.TrimPrefix(tt.env, "GODEBUG="))
			}
			m := StartMilter(t, MilterOptions{Binary: milterBinary, Unix: true})
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", m.Pid()))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, kv := range strings.Split(string(raw), "\x00") {
				if strings.HasPrefix(kv, "GODEBUG=") {
					got = append(got, kv)
				}
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Fatalf("the daemon (pid %d, the one started) runs with %q, want %q", m.Pid(), got, tt.want)
			}
		})
	}
}
