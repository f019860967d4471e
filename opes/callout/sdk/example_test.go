package sdk_test

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// blocker refuses one sender at MAIL; it reads nothing else.
type blocker struct{}

func (blocker) Parts() sdk.Parts            { return sdk.Parts{Decide: []string{ocp.PartMail}} }
func (blocker) Begin(m *sdk.Message) sdk.Tx { return blockTx{m} }

type blockTx struct{ m *sdk.Message }

func (t blockTx) Decide(_ context.Context, part string, _ *opes.Recipient) (sdk.Answer, error) {
	if part == ocp.PartMail && t.m.Sender.Addr == "spam@example.org" {
		return sdk.Answer{Verdict: opes.Verdict{Kind: opes.Reject,
			Reply: opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "Go away"}}}, nil
	}
	return sdk.Answer{}, nil
}
func (blockTx) End(context.Context) (sdk.Answer, error) { return sdk.Answer{}, nil }
func (blockTx) Close()                                  {}

// A callout service in a few lines, served on loopback, used by a
// processor whose policy names it.
func Example() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sdk.Serve(ctx, ln, sdk.Mux{"blocker": blocker{}}) }()

	svc, _ := callout.NewService(callout.Config{Servers: []string{ln.Addr().String()}, Service: "blocker",
		Stages: opes.StagesOf(opes.StageMail), Parts: []string{ocp.PartMail}})
	spec := &opes.ServiceSpec{Name: "blocker", URI: "https://mx.example.net/opes/svc/blocker", Impl: svc}
	proc, _ := opes.NewProcessor(&opes.Policy{System: opes.System{URI: "https://mx.example.net/opes/"},
		Services: []*opes.ServiceSpec{spec}, Rules: []*opes.Rule{{Name: "all", Run: []*opes.ServiceSpec{spec}}}}, nil)

	for _, from := range []string{"friend@example.org", "spam@example.org"} {
		s := proc.NewSession()
		s.Connect(ctx)
		o := s.Mail(ctx, opes.Address{Addr: from})
		fmt.Println(from, o.Kind)
		if o.Reply != nil {
			fmt.Println(strings.Split(o.Reply.String(), "\r\n")[0])
		}
		s.Close()
	}
	svc.Close()
	cancel()
	<-done
	// Output:
	// friend@example.org continue
	// spam@example.org reject
	// 550-5.7.1 Go away
}
