# opes-milter — see README.md.
#   make run    start the milter on the embedded default policy (loopback)
#   make test   install what the tests need (Debian, as root) and run them all
#   make bench  one table of throughput, latency and memory against peers
#   make fuzz   every fuzz target for FUZZTIME (default 30s)
#   make lint   gofmt, go vet, staticcheck
#   make deb    Debian package dist/opes-milter_<version>_<arch>.deb (docs/packaging.md)

GO        ?= go
LISTEN    ?= inet:10028@127.0.0.1
STATICCHECK_VERSION ?= v0.8.2
DIST      ?= dist
# Debian packages the tests need: Postfix (the MTA tests), miltertest
# (the independent milter client), lintian and adduser (the package test),
# m4 (the Sendmail configuration of the Sendmail tests), clamd and spamd
# (the virus and spam services), PostgreSQL (the shared store backend),
# OpenDKIM (the child-milter service and DKIM interop), c-icap with its
# content-filter and virus-scan modules (the ICAP service), slapd (the
# directory of the reroute service), rspamd (the rspamd service). Every engine
# is started by the tests themselves, offline, on loopback.
APT_PACKAGES = postfix miltertest lintian adduser m4 clamav-daemon spamassassin spamd spamc \
	postgresql opendkim opendkim-tools c-icap libc-icap-mod-contentfiltering libc-icap-mod-virus-scan slapd rspamd

.PHONY: all build run test unit deps lint bench bench-go fuzz deb clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

run:
	$(GO) run ./cmd/opes-milter -listen '$(LISTEN)'

# deps installs the real MTA the integration tests drive and the other
# tools they run (APT_PACKAGES), only when one is missing. Postfix is
# preseeded with "No configuration": no system instance is set up, the
# tests run their own instances from temp directories on loopback.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: missing$$missing; installing them needs root (apt-get install$$missing)"; exit 1; fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends$$missing; \
	fi
	@# The Sendmail tests fetch sendmail-bin with apt-get download, which
	@# needs package lists; a fresh image may have none.
	@if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: no apt package lists; run apt-get update as root"; exit 1; fi; \
	  apt-get -o DPkg::Lock::Timeout=300 update -qq; \
	fi

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./opes/... ./policy/... ./milter/... ./internal/... ./cmd/...

# test also runs every fuzz target for TEST_FUZZTIME (new crashers found
# there land in testdata/fuzz and replay in every later go test).
TEST_FUZZTIME ?= 2s
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	GO='$(GO)' FUZZTIME='$(TEST_FUZZTIME)' sh bench/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^third_party/')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# bench prints one table of every figure against issue 8's targets
# (docs/performance.md): opes-milter, a null go-milter and MIMEDefang on
# the same machine in the same run, and Postfix end to end. As root;
# about 6-8 minutes. bench-go runs the go test benchmarks.
bench: build
	@for p in mimedefang libmilter-dev gcc libc6-dev; do \
	  if ! dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends mimedefang libmilter-dev gcc libc6-dev; break; fi; done
	GO='$(GO)' sh bench/run.sh $(BENCH_ARGS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# fuzz runs every Fuzz target of the module for FUZZTIME each.
FUZZTIME ?= 30s
fuzz:
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' sh bench/fuzz.sh

# deb builds the Debian package with dpkg-deb (packaging/build-deb.sh).
# VERSION=1.2.3 overrides the version from git describe; COMPRESS=-Zgzip
# builds faster than the default xz.
deb:
	DIST='$(DIST)' GO='$(GO)' VERSION='$(VERSION)' COMPRESS='$(COMPRESS)' sh packaging/build-deb.sh

clean:
	rm -rf bin dist
