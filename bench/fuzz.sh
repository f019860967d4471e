#!/bin/sh
# bench/fuzz.sh — what `make fuzz` runs: every Fuzz target of the module
# (third_party excluded), one after the other, each for FUZZTIME (default
# 30s). FUZZ_MATCH=regexp limits it to targets whose "pkg Name" matches.
# New failing inputs are written under the package's testdata/fuzz/ by
# go test; they then replay in every plain `go test` run until fixed.
#
# Go 1.26's fuzz coordinator can report a bare "context deadline exceeded"
# when -fuzztime ends while a worker is mid-input (go.dev/issue/75804,
# fixed in Go 1.27): no input is written, nothing is found. Such a run is
# repeated once; if it only flakes again, it counts as passed and is
# listed. Anything else — a written input, a panic, any other error —
# fails.
#
#   FUZZTIME=10s bench/fuzz.sh
#   FUZZ_MATCH='milter ' bench/fuzz.sh
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
FUZZ_MATCH=${FUZZ_MATCH:-.}
n=0
failed=""
flaked=""
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# fuzz_once runs one target; 0 passed, 1 failed, 2 the coordinator race.
fuzz_once() {
	if "$GO" test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" "$1" >"$out" 2>&1; then
		cat "$out"
		return 0
	fi
	cat "$out"
	if grep -q 'context deadline exceeded' "$out" && ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:|seed corpus' "$out"; then
		return 2
	fi
	return 1
}
for f in $(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | grep -v '^\./third_party/' | sort); do
	pkg=./$(dirname "${f#./}")
	for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(f \*testing\.F).*/\1/p' "$f"); do
		echo "$pkg $name" | grep -qE -- "$FUZZ_MATCH" || continue
		n=$((n + 1))
		echo "== $pkg $name ($FUZZTIME)"
		rc=0
		fuzz_once "$pkg" "$name" || rc=$?
		if [ "$rc" -eq 2 ]; then
			echo "fuzz: $pkg $name: bare 'context deadline exceeded' (go.dev/issue/75804); once more"
			rc=0
			fuzz_once "$pkg" "$name" || rc=$?
			if [ "$rc" -eq 2 ]; then
				flaked="$flaked $pkg:$name"
				rc=0
			fi
		fi
		if [ "$rc" -ne 0 ]; then
			failed="$failed $pkg:$name"
		fi
	done
done
if [ -n "$failed" ]; then
	echo "fuzz: $n targets, failed:$failed"
	exit 1
fi
if [ -n "$flaked" ]; then
	echo "fuzz: coordinator deadline race twice, nothing found:$flaked"
fi
echo "fuzz: $n targets, all passed"
