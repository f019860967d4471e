package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestEnv(t *testing.T) {
	tests := []struct {
		in     []string
		want   []string
		needed bool
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + Setting}, true},
		{[]string{"GODEBUG=", "A=1"}, []string{"GODEBUG=" + Setting, "A=1"}, true},
		{[]string{"GODEBUG=madvdontneed=1"}, []string{"GODEBUG=madvdontneed=1," + Setting}, true},
		{[]string{"GODEBUG=schedtrace=0"}, []string{"GODEBUG=schedtrace=0"}, false},
		{[]string{"GODEBUG=gctrace=1, schedtrace=1000"}, []string{"GODEBUG=gctrace=1, schedtrace=1000"}, false},
		{[]string{"NOTGODEBUG=x"}, []string{"NOTGODEBUG=x", "GODEBUG=" + Setting}, true},
	}
	for _, tt := range tests {
		got, needed := Env(tt.in)
		if needed != tt.needed || !slices.Equal(got, tt.want) {
			t.Errorf("Env(%q) = %q, %v; want %q, %v", tt.in, got, needed, tt.want, tt.needed)
		}
	}
}

// TestExec runs this test binary as a child that calls Exec and prints
// the GODEBUG it then runs with: the setting must arrive through a real
// re-execution of the same process, once, and not override an operator's.
func TestExec(t *testing.T) {
	if os.Getenv("SYSMON_TEST_CHILD") == "1" {
		if os.Getenv("SYSMON_TEST_PID") == "" {
			os.Setenv("SYSMON_TEST_PID", strconv.Itoa(os.Getpid()))
		}
		if err := Exec(); err != nil {
			t.Fatal(err)
		}
		// Here after the exec, in the new image: Exec found the setting
		// in place and returned without executing again.
		fmt.Printf("child: pid %d of %s, GODEBUG=%s\n", os.Getpid(), os.Getenv("SYSMON_TEST_PID"), os.Getenv("GODEBUG"))
		return
	}
	for env, want := range map[string]string{
		"":                     Setting,
		"GODEBUG=gctrace=0":    "gctrace=0," + Setting,
		"GODEBUG=schedtrace=0": "schedtrace=0",
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestExec$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "SYSMON_TEST_CHILD=1")
		if env != "" {
			cmd.Env = append(cmd.Env, env)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child (%q): %v\n%s", env, err, out)
		}
		pid := strconv.Itoa(cmd.Process.Pid)
		if line := "child: pid " + pid + " of " + pid + ", GODEBUG=" + want + "\n"; !strings.Contains(string(out), line) {
			t.Errorf("child with %q: want the line %q in\n%s", env, line, out)
		}
	}
}
