package bypass_test

import (
	"fmt"

	"github.com/opesmilter/opes-milter/opes/bypass"
)

// How the processor uses the package at end of header: the union of the
// message's OPES-Bypass fields, matched against each service. Whether a
// covered service is then skipped is the processor's decision (bypassable,
// not required for delivery, trusted source).
func Example() {
	m := bypass.NewMatcher("https://mx1.example.net/opes/", []string{
		"https://mx1.example.net/opes/svc/av",
		"https://mx1.example.net/opes/svc/translate-de",
	}, true)

	req, malformed := bypass.Collect([]string{
		"HTTPS://MX1.EXAMPLE.NET/opes/svc/translate-de",
		"<not a uri>",
	})
	fmt.Println("request:", req, "malformed:", malformed)
	for _, svc := range []string{"https://mx1.example.net/opes/svc/av", "https://mx1.example.net/opes/svc/translate-de"} {
		fmt.Println(svc, m.Match(req, svc))
	}

	// A request naming another OPES system counts as "*" (RFC 3897 §4.3).
	other, _ := bypass.ParseField("https://mx.other.example/opes/")
	fmt.Println("other system:", m.Match(other, "https://mx1.example.net/opes/svc/av"))

	// The same request in the SMTP dialog: MAIL FROM:<...> X-OPES-BYPASS=...
	if _, err := bypass.ParseParam("https://mx1.example.net/opes/svc/av+0D+0A"); err != nil {
		fmt.Println("501 5.5.4", err)
	}
	// Output:
	// request: https://mx1.example.net/opes/svc/translate-de malformed: 1
	// https://mx1.example.net/opes/svc/av not-covered
	// https://mx1.example.net/opes/svc/translate-de service
	// other system: unknown-uri
	// 501 5.5.4 bypass: X-OPES-BYPASS value has octet 0x0d at offset 35
}
