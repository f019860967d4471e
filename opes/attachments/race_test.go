//go:build race

package attachments

// slow stretches time limits: the race detector makes the walk about ten
// times slower.
const slow = 10
