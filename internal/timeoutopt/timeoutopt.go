// Package timeoutopt parses a service's timeout option: a Go duration
// string such as "30s", greater than zero and at most the service's
// ceiling, so that a typo can neither disable the bound nor stall mail
// for an hour.
package timeoutopt

import (
	"fmt"
	"strings"
	"time"
)

// Parse returns v as a duration in (0, max]. The error says what was
// wrong with v; the caller adds the option's name.
func Parse(v string, max time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. \"30s\")", v)
	}
	if d <= 0 || d > max {
		return 0, fmt.Errorf("%s is not between 0 and %s", d, max)
	}
	return d, nil
}
