package milter_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/opes"
)

// TestMultiLineRepliesSurviveFormatting guards the local go-milter patch
// (third_party/go-milter/PATCHES.md #1): unpatched, about one multi-line
// reply in twenty came out with a mangled line prefix.
func TestMultiLineRepliesSurviveFormatting(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		r := &opes.SMTPReply{Code: 550, Enhanced: "5.7.1"}
		if i%2 == 1 {
			r.Code, r.Enhanced = 451, "4.3.0"
		}
		for range 2 + rng.IntN(20) {
			r.Lines = append(r.Lines, strings.Repeat(string(rune('a'+rng.IntN(26))), 1+rng.IntN(490)))
		}
		resp, err := gomilter.RejectWithCodeAndReason(uint16(r.Code), r.MilterText())
		if err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSuffix(string(resp.Response().Data), "\x00")
		if got != r.String() {
			t.Fatalf("reply %d mangled:\n got %q\nwant %q", i, got, r.String())
		}
	}
}
