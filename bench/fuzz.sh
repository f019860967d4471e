#!/bin/sh
# bench/fuzz.sh — what `make fuzz` runs: every Fuzz target of the module
# (third_party excluded), one after the other, each for FUZZTIME (default
# 30s). FUZZ_MATCH=regexp limits it to targets whose "pkg Name" matches.
# New failing inputs are written under the package's testdata/fuzz/ by
# go test; they then replay in every plain `go test` run until fixed.
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
for f in $(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | grep -v '^\./third_party/' | sort); do
	pkg=./$(dirname "${f#./}")
	for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(f \*testing\.F).*/\1/p' "$f"); do
		echo "$pkg $name" | grep -qE -- "$FUZZ_MATCH" || continue
		n=$((n + 1))
		echo "== $pkg $name ($FUZZTIME)"
		if ! "$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" "$pkg"; then
			failed="$failed $pkg:$name"
		fi
	done
done
if [ -n "$failed" ]; then
	echo "fuzz: $n targets, failed:$failed"
	exit 1
fi
echo "fuzz: $n targets, all passed"
