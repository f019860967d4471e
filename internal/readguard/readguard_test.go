package readguard

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReader(t *testing.T) {
	boom := errors.New("disk gone")
	g := New(context.Background(), io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(boom)))
	b, err := io.ReadAll(g)
	if err != nil || string(b) != "abc" || !errors.Is(g.Err(), boom) {
		t.Fatalf("ReadAll = %q, %v; Err = %v", b, err, g.Err())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g = New(ctx, strings.NewReader("abc"))
	if n, err := g.Read(make([]byte, 3)); n != 0 || err != io.EOF || !errors.Is(g.Err(), context.Canceled) {
		t.Fatalf("cancelled: %d %v %v", n, err, g.Err())
	}
	g = New(context.Background(), strings.NewReader("ok"))
	if b, _ := io.ReadAll(g); string(b) != "ok" || g.Err() != nil {
		t.Fatalf("clean read: %q %v", b, g.Err())
	}
}
