#!/bin/sh
# build-deb.sh builds the Debian package of opes-milter with plain
# dpkg-deb: dist/opes-milter_<version>_<arch>.deb (make deb).
#
# Environment (all optional):
#   VERSION     upstream version; default from `git describe --tags`
#               (v1.2.3 -> 1.2.3, v1.2.3-4-gabc -> 1.2.3+4.gabc,
#               v2.0.0-rc1 -> 2.0.0~rc1), 0.1.0
#               when there is no tag. The Debian revision -1 is appended.
#   ARCH        Debian architecture; default dpkg --print-architecture.
#   DIST        output directory; default dist (relative to the repo).
#   MAINTAINER  "Name <address>" for the control file and changelog.
#   COMPRESS    dpkg-deb compression options; default "-Zxz" (xz -6, some
#               seconds for the 14 MB of binaries); the package test uses
#               "-Zgzip" to be quick.
#   GO          the go command.
#
# Run from anywhere; it works in the repository root. Needs go, dpkg-deb
# (dpkg), gzip; git only for the version and the date.
set -eu

cd "$(dirname "$0")/.."
GO=${GO:-go}
DIST=${DIST:-dist}
MAINTAINER=${MAINTAINER:-"opes-milter maintainers <maintainers@opes-milter.invalid>"}
ARCH=${ARCH:-$(dpkg --print-architecture)}

if [ -z "${VERSION:-}" ]; then
	d=$(git describe --tags --always 2>/dev/null || true)
	case "$d" in
	v[0-9]*.* | [0-9]*.*)
		VERSION=$(printf '%s\n' "${d#v}" | sed -e 's/-\([0-9][0-9]*\)-g\([0-9a-f]*\)$/+\1.g\2/' -e 's/-/~/g') ;;
	*)
		VERSION=0.1.0 ;;
	esac
fi
case "$VERSION" in
[0-9]*) ;;
*) echo "build-deb.sh: version $VERSION must start with a digit" >&2; exit 1 ;;
esac
DEBVERSION=$VERSION-1

case "$ARCH" in
amd64) GOARCH=amd64 ;;
arm64) GOARCH=arm64 ;;
i386) GOARCH=386 ;;
armhf) GOARCH=arm GOARM=7; export GOARM ;;
ppc64el) GOARCH=ppc64le ;;
s390x) GOARCH=s390x ;;
riscv64) GOARCH=riscv64 ;;
*) echo "build-deb.sh: no Go architecture known for $ARCH" >&2; exit 1 ;;
esac

# Reproducible: file dates and the changelog date come from the last commit.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
DATE=$(date -u -R -d "@$SOURCE_DATE_EPOCH")

work=$(mktemp -d "${TMPDIR:-/tmp}/opes-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
doc=$root/usr/share/doc/opes-milter

# Static, position-independent binaries without a toolchain path in them.
mkdir -p "$root/usr/bin"
CGO_ENABLED=0 GOOS=linux GOARCH=$GOARCH $GO build -trimpath -buildmode=pie \
	-ldflags="-s -w" -o "$root/usr/bin/" ./cmd/opes-milter ./cmd/opesctl ./cmd/opes-callout

install -D -m 0644 packaging/opes-milter.service "$root/lib/systemd/system/opes-milter.service"
install -D -m 0644 contrib/systemd/opes-milter.tmpfiles "$root/usr/lib/tmpfiles.d/opes-milter.conf"

# The conffile traces and refuses nothing: installing the package must not
# change what happens to mail. The examples go to the documentation.
install -D -m 0644 packaging/policy-note.toml "$root/etc/opes-milter/policy.toml"
mkdir -p "$root/usr/share/doc/opes-milter/examples"
for f in contrib/*.toml contrib/postfix/* contrib/sendmail/*; do
	install -m 0644 "$f" "$root/usr/share/doc/opes-milter/examples/$(basename "$f")"
done

install -D -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/opes-milter"

mkdir -p "$root/usr/share/man/man8"
for m in opes-milter.8 opesctl.8 opes-callout.8; do
	gzip -9n <"packaging/$m" >"$root/usr/share/man/man8/$m.gz"
done

mkdir -p "$doc"
install -m 0644 packaging/copyright "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
for f in configuration operations troubleshooting deployment profile decisions callouts performance; do
	if [ -f "docs/$f.md" ]; then
		gzip -9n <"docs/$f.md" >"$doc/$f.md.gz"
	fi
done
describe=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
{
	printf 'opes-milter (%s) unstable; urgency=medium\n\n' "$DEBVERSION"
	printf '  * Built from the opes-milter repository, %s (make deb).\n\n' "$describe"
	printf ' -- %s  %s\n' "$MAINTAINER" "$DATE"
} | gzip -9n >"$doc/changelog.Debian.gz"

# Control area.
mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/$s" "$root/DEBIAN/$s"
done
echo /etc/opes-milter/policy.toml >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print |
	sed 's#^\./##' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$DEBVERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
	-e "s|@MAINTAINER@|$MAINTAINER|" packaging/control.in >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# Modes as a package has them, whatever the umask.
find "$root" -type d -exec chmod 0755 {} +

mkdir -p "$DIST"
out=$DIST/opes-milter_${DEBVERSION}_$ARCH.deb
# shellcheck disable=SC2086 # COMPRESS holds options
dpkg-deb --root-owner-group ${COMPRESS:--Zxz} --build "$root" "$out" >/dev/null
echo "$out"
