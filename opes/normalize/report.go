package normalize

import (
	"errors"
	"slices"

	"github.com/opesmilter/opes-milter/opes"
)

// repairSet is the set of enabled repairs.
type repairSet uint32

func (s repairSet) add(name string) repairSet { return s | 1<<slices.Index(allRepairs, name) }

func (s repairSet) has(name string) bool {
	i := slices.Index(allRepairs, name)
	return i >= 0 && s&(1<<i) != 0
}

// maxProblems bounds the list of unrepairable problems kept per message.
const maxProblems = 20

// report collects what was repaired and what could not be.
type report struct {
	done     map[string]int // repair name → count
	problems []string       // unrepairable, printable ASCII tokens, unique
}

func newReport() *report { return &report{done: map[string]int{}} }

func (r *report) fix(name string) { r.done[name]++ }

// fail records a problem that was left as it was.
func (r *report) fail(problem string) {
	p := opes.SanitizeText(problem, 80)
	if slices.Contains(r.problems, p) || len(r.problems) >= maxProblems {
		return
	}
	r.problems = append(r.problems, p)
}

// repairs lists the repairs made, in the order of allRepairs.
func (r *report) repairs() []string {
	var out []string
	for _, n := range allRepairs {
		if r.done[n] > 0 {
			out = append(out, n)
		}
	}
	return out
}

var (
	// errSigned stops the rewrite: a part is signed or encrypted.
	errSigned = errors.New("normalize: signed or encrypted content")
	// errUnchanged makes ReplaceBody drop the copy: nothing to repair.
	errUnchanged = errors.New("normalize: body unchanged")
)
