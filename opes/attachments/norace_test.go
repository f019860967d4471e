//go:build !race

package attachments

const slow = 1
