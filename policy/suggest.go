package policy

import (
	"fmt"
	"strings"
)

// suggest returns `; did you mean "x"?` for the known word closest to
// word, or "" when nothing is close enough to be a likely typo: one edit
// in four characters (at least one, at most three), or the start of
// exactly one known word ("privacy" for "privacy_url").
func suggest(word string, known []string) string {
	lw := strings.ToLower(word)
	best, bestD := "", -1
	var prefixOf []string
	for _, k := range known {
		lk := strings.ToLower(k)
		if len(lw) >= 3 && strings.HasPrefix(lk, lw) {
			prefixOf = append(prefixOf, k)
		}
		if d := distance(lw, lk); bestD < 0 || d < bestD {
			best, bestD = k, d
		}
	}
	if bestD >= 0 && bestD <= min(max(len(word)/4, 1), 3) && best != word {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	if len(prefixOf) == 1 {
		return fmt.Sprintf("; did you mean %q?", prefixOf[0])
	}
	return ""
}

// distance is the optimal string alignment distance in bytes: Levenshtein
// plus transposition of neighbours, the commonest typo ("verdcit"). Keys
// are short; inputs are cut so a hostile file cannot make this quadratic
// in its size.
func distance(a, b string) int {
	const maxLen = 64
	if len(a) > maxLen {
		a = a[:maxLen]
	}
	if len(b) > maxLen {
		b = b[:maxLen]
	}
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
