module github.com/opesmilter/opes-milter

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/d--j/go-milter v0.10.1
	github.com/emersion/go-message v0.18.2
	github.com/oklog/ulid/v2 v2.1.2
	golang.org/x/sys v0.50.0
)

require golang.org/x/text v0.28.0 // indirect

replace github.com/d--j/go-milter => ./third_party/go-milter
