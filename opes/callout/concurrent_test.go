package callout

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// gate is a callout service whose end of message waits until every
// service sharing the gate is inside End (bounded by a timeout), so a
// test can tell whether the processor ran them at the same time.
type gate struct {
	inside  *atomic.Int32
	want    int32
	reply   *opes.Reply // refuse with this, or tag
	tagName string
}

func (g gate) Parts() sdk.Parts { return sdk.Parts{Read: []string{ocp.PartHeaders, ocp.PartBody}} }
func (g gate) Begin(*sdk.Message) sdk.Tx {
	return &gateTx{g: g}
}

type gateTx struct{ g gate }

func (x *gateTx) Decide(context.Context, string, *opes.Recipient) (sdk.Answer, error) {
	return sdk.Answer{}, nil
}

func (x *gateTx) End(ctx context.Context) (sdk.Answer, error) {
	x.g.inside.Add(1)
	deadline := time.Now().Add(3 * time.Second)
	met := false
	for time.Now().Before(deadline) {
		if x.g.inside.Load() >= x.g.want {
			met = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !met {
		return sdk.Answer{}, fmt.Errorf("the other callouts never came: they do not run concurrently")
	}
	if x.g.reply != nil {
		return sdk.Answer{Verdict: opes.Verdict{Kind: opes.Reject, Reply: *x.g.reply}}, nil
	}
	return sdk.Answer{Verdict: opes.Verdict{Action: "header-added"},
		Header: []opes.HeaderChange{{Kind: opes.AppendField, Name: x.g.tagName, Value: "yes"}}}, nil
}

func (x *gateTx) Close() {}

// TestCalloutsOfAStageRunConcurrently: three callouts at the end of
// message wait for each other at their servers, which only works when the
// processor overlaps them; their changes apply in policy order.
func TestCalloutsOfAStageRunConcurrently(t *testing.T) {
	var inside atomic.Int32
	var specs []*opes.ServiceSpec
	for i, name := range []string{"one", "two", "three"} {
		addr := startSDK(t, gate{inside: &inside, want: 3, tagName: "X-" + name}, nil)
		svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nstages = [\"eom\"]\nparts = [\"headers\", \"body\"]\ntimeout = \"10s\"\n", addr))
		sp := spec(name, svc)
		sp.Bypassable = i > 0
		specs = append(specs, sp)
	}
	proc := newProcessor(t, specs...)
	o, _ := runMessage(t, proc, plainMessage)
	if o.Kind != opes.Continue {
		t.Fatalf("outcome %v %v", o.Kind, o.Reply)
	}
	got := delivered(plainMessage, o)
	if !strings.HasSuffix(got, "X-one: yes\r\nX-two: yes\r\nX-three: yes\r\n") {
		t.Errorf("changes not applied in policy order:\n%s", got)
	}
}

// TestConcurrentRefusalsDecideInPolicyOrder: when two concurrent callouts
// refuse, the first in policy order decides, every time.
func TestConcurrentRefusalsDecideInPolicyOrder(t *testing.T) {
	var mu sync.Mutex
	for round := range 3 {
		var inside atomic.Int32
		first := startSDK(t, gate{inside: &inside, want: 2, reply: &opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "first says no"}}, nil)
		second := startSDK(t, gate{inside: &inside, want: 2, reply: &opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "second says no"}}, nil)
		var specs []*opes.ServiceSpec
		for _, c := range []struct{ name, addr string }{{"first", first}, {"second", second}} {
			svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nstages = [\"eom\"]\nparts = [\"headers\", \"body\"]\ntimeout = \"10s\"\n", c.addr))
			specs = append(specs, spec(c.name, svc))
		}
		proc := newProcessor(t, specs...)
		o, _ := runMessage(t, proc, plainMessage)
		mu.Lock()
		if o.Kind != opes.Reject || o.Reply == nil || !strings.Contains(o.Reply.String(), "first says no") || !strings.Contains(o.Reply.String(), "svc/first; action=rejected") {
			t.Errorf("round %d: %v\n%v", round, o.Kind, o.Reply)
		}
		mu.Unlock()
	}
}
