package clamav

import (
	"fmt"
	"os"
	"testing"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// The tests run against a real clamd, offline: a signature database of
// two custom signatures is enough for clamd to start (in ~0.1 s), and no
// official database is ever downloaded. internal/enginetest starts it.
const (
	eicar = enginetest.EICAR
	token = enginetest.Token

	eicarSig = enginetest.EicarSig
	tokenSig = enginetest.TokenSig

	// streamMax is the test clamd's StreamMaxLength: above the 30 MB
	// message of TestLargeMessage.
	streamMax = 64 << 20
)

// shared is the daemon most tests use; TestMain starts it.
var shared *enginetest.Clamd

func TestMain(m *testing.M) {
	var err error
	shared, err = startClamd(streamMax)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: opes/clamav tests need a real clamd: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.Stop()
	os.Exit(code)
}

func startClamd(maxStream int) (*enginetest.Clamd, error) {
	return enginetest.StartClamd(enginetest.ClamdOptions{MaxStreamLength: maxStream})
}
