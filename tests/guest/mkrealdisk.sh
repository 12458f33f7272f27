#!/bin/bash
# mkrealdisk.sh OUT: a data disk of real files for the migration benchmark,
# OUT/real.raw (ext4, no partition table, /manifest.sha256 at its root as
# on the synthetic disk, so the guest's pagecache-read and verify work on
# it unchanged), and OUT/real.info (what it holds and how well zstd -1, the
# level multifd-zstd uses, compresses its files).
#
# The synthetic disk of the e2e tests is random bytes: no compressor gains
# anything on it, which flatters nasmig against multifd-zstd.  Real page
# cache is binaries, libraries, source, text and documentation, next to
# already-compressed data (images, fonts, jar and omni.ja archives): here,
# the files of Debian packages, downloaded with apt-get (the .debs are kept
# in $NASMIG_REAL_DEBS, default OUT/real-debs).
set -euo pipefail

OUT=${1:?usage: mkrealdisk.sh OUT}
DEBS=${NASMIG_REAL_DEBS:-$OUT/real-debs}
# About 1.4 GiB of files: a compiler, LLVM, a browser, an office suite, a
# JRE, Go's and the kernel's sources and documentation, Python and Perl
# libraries, fonts and desktop images.
PKGS=(gcc-12 libllvm15 libclang-cpp15 libpython3.11-stdlib perl-modules-5.36 golang-1.19-src libicu72
	firefox-esr libreoffice-core openjdk-17-jre-headless desktop-base fonts-noto-core linux-doc-6.1
	libgl1-mesa-dri python3-numpy)

stamp="${PKGS[*]}"
if [[ -f $OUT/real.raw && -f $OUT/real.info && $(cat "$OUT/.real-stamp" 2>/dev/null) == "$stamp" ]]; then
	echo "real disk: unchanged, reusing $OUT/real.raw"
	exit 0
fi

mkdir -p "$DEBS"
echo "real disk: downloading ${#PKGS[@]} Debian packages into $DEBS"
(cd "$DEBS" && apt-get download -q "${PKGS[@]}" 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' || true)
for p in "${PKGS[@]}"; do
	compgen -G "$DEBS/${p}_*.deb" >/dev/null || { echo "real disk: $p was not downloaded" >&2; exit 1; }
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/nasmig-real.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/root"
versions=()
for p in "${PKGS[@]}"; do
	deb=$(ls -1 "$DEBS/${p}"_*.deb | sort -V | tail -1)
	dpkg-deb -x "$deb" "$stage/root"
	versions+=("$(dpkg-deb -f "$deb" Package Version | paste -sd=)")
done
# Only regular files whose names sha256sum prints as they are.
(cd "$stage/root" && find . -type f -printf '%P\n' | grep -v -e '\\' | LC_ALL=C sort >"$stage/list")
(cd "$stage/root" && xargs -d '\n' -a "$stage/list" sha256sum) >"$stage/manifest.sha256"
mv "$stage/manifest.sha256" "$stage/root/manifest.sha256"

files=$(wc -l <"$stage/list")
bytes=$(cd "$stage/root" && xargs -d '\n' -a "$stage/list" stat -c %s | awk '{s += $1} END {print s}')
zbytes=$(cd "$stage/root" && xargs -d '\n' -a "$stage/list" cat | zstd -1 -T0 -c | wc -c)
disk_mib=$((bytes * 5 / 4 / 1048576 + 128))
rm -f "$stage/real.raw"
truncate -s "${disk_mib}M" "$stage/real.raw"
mkfs.ext4 -q -F -b 4096 -L nasmig-real -E lazy_itable_init=0,lazy_journal_init=0 -d "$stage/root" "$stage/real.raw"
{
	echo "files $files"
	echo "bytes $bytes"
	echo "zstd1-bytes $zbytes"
	awk -v a="$bytes" -v b="$zbytes" 'BEGIN {printf "zstd1-ratio %.2f\n", a / b}'
	echo "disk-mib $disk_mib"
	echo "packages ${versions[*]}"
} >"$stage/real.info"
mv "$stage/real.raw" "$OUT/real.raw"
mv "$stage/real.info" "$OUT/real.info"
echo "$stamp" >"$OUT/.real-stamp"
echo "real disk: $OUT/real.raw: $files files, $((bytes / 1048576)) MiB, zstd -1 ratio $(awk '/zstd1-ratio/ {print $2}' "$OUT/real.info")"
