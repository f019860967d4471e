# opes-milter — see README.md.
#   make run    start the milter on the embedded default policy (loopback)
#   make test   install what the tests need (Debian, as root) and run them all
#   make bench  benchmarks
#   make lint   gofmt, go vet, staticcheck

GO        ?= go
LISTEN    ?= inet:10028@127.0.0.1
STATICCHECK_VERSION ?= v0.8.2
APT_PACKAGES = postfix

.PHONY: all build run test unit deps lint bench clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

run:
	$(GO) run ./cmd/opes-milter -listen '$(LISTEN)'

# deps installs the real MTA the integration tests drive. Postfix is
# preseeded with "No configuration": no system instance is set up, the
# tests run their own instances from temp directories on loopback.
deps:
	@missing=""; for b in /usr/sbin/postfix /usr/sbin/smtp-sink; do [ -x $$b ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: Postfix is missing and installing it needs root (apt-get install postfix)"; exit 1; fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./opes/... ./policy/... ./milter/... ./internal/... ./cmd/...

test: deps
	$(GO) vet ./...
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^third_party/')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
