#!/bin/sh
# bench/run.sh — what `make bench` runs: build opes-milter, the null
# milter, the benchmark driver and the Postfix end-to-end benchmark, then
# run every part once (about 6-10 minutes on 2 cores) and print one table.
# Needs root (MIMEDefang runs as user defang, Postfix instances are
# started from temp dirs) and the Debian packages postfix and mimedefang.
#
#   bench/run.sh [opesbench flags, e.g. -slice 3s -rounds 3 -no-mimedefang]
#
# BENCH_WORK=DIR keeps sockets, logs, profiles and the table (table.md)
# there; by default a new /tmp/opesbench.XXXXXX, printed at the end.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: run as root (MIMEDefang and the Postfix instances need it)" >&2
	exit 1
fi
WORK=${BENCH_WORK:-$(mktemp -d /tmp/opesbench.XXXXXX)}
BIN=$WORK/bin
mkdir -p "$BIN"
echo "bench/run.sh: building into $BIN" >&2
"$GO" build -o "$BIN/opes-milter" ./cmd/opes-milter
"$GO" build -o "$BIN/nullmilter" ./bench/cmd/nullmilter
"$GO" build -o "$BIN/opesbench" ./bench/cmd/opesbench
"$GO" test -c -o "$BIN/e2e.test" ./bench/e2e
# The null milter in C, for the end-to-end part (left out without
# libmilter-dev; `make bench` installs it).
if [ -f /usr/include/libmilter/mfapi.h ] && command -v cc >/dev/null; then
	cc -O2 -o "$BIN/nullmilter-c" bench/peers/libmilter/nullmilter.c -lmilter -pthread
	export OPES_BENCH_NULLMILTER_C="$BIN/nullmilter-c"
fi
exec "$BIN/opesbench" -opes "$BIN/opes-milter" -null "$BIN/nullmilter" -e2e "$BIN/e2e.test" \
	-work "$WORK" -out "$WORK/table.md" "$@"
