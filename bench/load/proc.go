package load

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// statFields returns the fields of /proc/PID/stat after the command name
// (which may contain spaces and parentheses): index 0 is the state.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("load: /proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// ProcCPU is the CPU time (user + system) of one process, including the
// children it has waited for; -1 if it cannot be read.
func ProcCPU(pid int) time.Duration {
	f, err := statFields(pid)
	if err != nil || len(f) < 15 {
		return -1
	}
	var ticks int64
	// utime, stime, cutime, cstime are fields 14-17 of stat(5), i.e. 11-14
	// after the command name.
	for _, s := range f[11:15] {
		n, _ := strconv.ParseInt(s, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// descendants returns pids and every live process below them.
func descendants(pids []int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(pid)
		if err != nil || len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
	}
	in := map[int]bool{}
	for _, p := range pids {
		in[p] = true
	}
	for changed := true; changed; {
		changed = false
		for pid, ppid := range parent {
			if in[ppid] && !in[pid] {
				in[pid], changed = true, true
			}
		}
	}
	out := make([]int, 0, len(in))
	for p := range in {
		out = append(out, p)
	}
	return out
}

// TreeCPU is the CPU time of the processes pids and all their live
// descendants (a MIMEDefang multiplexor and its Perl workers, say).
// Descendants that exited count once their parent has waited for them.
func TreeCPU(pids []int) time.Duration {
	var sum time.Duration
	for _, p := range descendants(pids) {
		if c := ProcCPU(p); c > 0 {
			sum += c
		}
	}
	return sum
}

// PeakRSS returns VmHWM, the peak resident set size of a process, in
// octets.
func PeakRSS(pid int) (int64, error) {
	return statusKiB(pid, "VmHWM:")
}

// RSS returns VmRSS, the current resident set size, in octets.
func RSS(pid int) (int64, error) {
	return statusKiB(pid, "VmRSS:")
}

func statusKiB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("load: /proc/%d/status %s %q: %w", pid, key, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("load: /proc/%d/status has no %s", pid, key)
}

// Sched is how a process spent its CPU and how often its threads were
// switched out: the cost of waking up, which for a light milter behind an
// MTA is most of its cost.
type Sched struct {
	User, System time.Duration
	// Switches counts the voluntary and involuntary context switches of
	// the live threads (/proc/PID/task/*/status); those of threads that
	// exited are lost, which for a Go program (threads are kept) is none.
	Switches int64
}

// Sub is the difference s - o, for a measurement between two readings.
func (s Sched) Sub(o Sched) Sched {
	return Sched{User: s.User - o.User, System: s.System - o.System, Switches: s.Switches - o.Switches}
}

// SchedOf reads the Sched of one process.
func SchedOf(pid int) (Sched, error) {
	f, err := statFields(pid)
	if err != nil {
		return Sched{}, err
	}
	if len(f) < 13 {
		return Sched{}, fmt.Errorf("load: /proc/%d/stat: %d fields", pid, len(f))
	}
	// utime and stime are fields 14 and 15 of stat(5), 11 and 12 after
	// the command name.
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	s := Sched{User: time.Duration(utime) * time.Second / clockTicks, System: time.Duration(stime) * time.Second / clockTicks}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return Sched{}, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, key := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if rest, ok := strings.CutPrefix(line, key); ok {
					n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
					if err != nil {
						return Sched{}, fmt.Errorf("load: /proc/%d/task/%s/status %s %q: %w", pid, t.Name(), key, rest, err)
					}
					s.Switches += n
				}
			}
		}
	}
	return s, nil
}
