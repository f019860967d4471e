package opes

import (
	"fmt"
	"strings"
)

// Stage is a point of the SMTP dialog at which the processor runs services
// and evaluates rules.
type Stage uint8

// The stages in dialog order. StageHeaders is the end of the header block;
// StageEOM is the end of the message data ("end of data"), the only stage
// at which the message may be modified.
const (
	StageConnect Stage = iota
	StageHelo
	StageMail
	StageRcpt
	StageData
	StageHeaders
	StageEOM
	numStages
)

var stageNames = [...]string{"connect", "helo", "mail", "rcpt", "data", "headers", "eom"}

func (s Stage) String() string {
	if s < numStages {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

// ParseStage accepts the stage names used in the policy file. "eod",
// "end-of-data" and "body" are accepted for the end of message.
func ParseStage(name string) (Stage, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "connect":
		return StageConnect, nil
	case "helo", "ehlo":
		return StageHelo, nil
	case "mail", "mail-from", "sender":
		return StageMail, nil
	case "rcpt", "rcpt-to", "recipient":
		return StageRcpt, nil
	case "data":
		return StageData, nil
	case "headers", "header", "eoh":
		return StageHeaders, nil
	case "eom", "eod", "end-of-data", "end-of-message", "body":
		return StageEOM, nil
	}
	return 0, fmt.Errorf("unknown stage %q (want connect, helo, mail, rcpt, data, headers or eom)", name)
}

// StageSet is a set of stages.
type StageSet uint16

// AllStages contains every stage.
const AllStages StageSet = 1<<numStages - 1

// StagesOf builds a set.
func StagesOf(stages ...Stage) StageSet {
	var s StageSet
	for _, st := range stages {
		s |= 1 << st
	}
	return s
}

// Has reports whether st is in the set.
func (s StageSet) Has(st Stage) bool { return s&(1<<st) != 0 }

// Add returns the set with st added.
func (s StageSet) Add(st Stage) StageSet { return s | 1<<st }

func (s StageSet) String() string {
	var parts []string
	for st := StageConnect; st < numStages; st++ {
		if s.Has(st) {
			parts = append(parts, st.String())
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}
