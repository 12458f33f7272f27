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

# A toolchain that runs chrooted into the disk (the guest's compile
# workload): gcc-12 above, with cpp, binutils and the C library to link
# against, and the libraries they load.
TOOLCHAIN=(cpp-12 gcc-12-base libcc1-0 libgcc-12-dev binutils binutils-x86-64-linux-gnu binutils-common libbinutils
	libctf0 libctf-nobfd0 libgprofng0 libjansson4 libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt-dev libcrypt1
	libgcc-s1 libgmp10 libisl23 libmpc3 libmpfr6 libstdc++6 libzstd1 zlib1g)
PKGS+=("${TOOLCHAIN[@]}")
# The source tree it builds: Lua, from Debian's source package (trixie's
# deb-src entry, which build.sh adds for QEMU's source).
SRCPKG=lua5.4

stamp="${PKGS[*]} src:$SRCPKG"
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

if ! compgen -G "$DEBS/${SRCPKG}_*.orig.tar.*" >/dev/null; then
	echo "real disk: downloading the source package $SRCPKG"
	(cd "$DEBS" && apt-get source -q --download-only "$SRCPKG" 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' || true)
fi
srctar=$(ls -1 "$DEBS/${SRCPKG}"_*.orig.tar.* 2>/dev/null | sort -V | tail -1)
[[ -n $srctar ]] || { echo "real disk: the source package $SRCPKG was not downloaded" >&2; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/nasmig-real.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/root"
versions=()
for p in "${PKGS[@]}"; do
	deb=$(ls -1 "$DEBS/${p}"_*.deb | sort -V | tail -1)
	dpkg-deb -x "$deb" "$stage/root"
	versions+=("$(dpkg-deb --showformat='${Package}=${Version}' -W "$deb")")
done
mkdir -p "$stage/root/src" "$stage/root/build" "$stage/root/dev" "$stage/root/proc" "$stage/root/tmp"
chmod 1777 "$stage/root/tmp"
tar -xf "$srctar" -C "$stage/root/src"
luasrc=$(cd "$stage/root" && ls -d src/lua-*/src | head -1)
[[ -n $luasrc ]] || { echo "real disk: no src/ folder in $srctar" >&2; exit 1; }
# The recipe of the guest's compile workload (tests/guest/init/compile.go):
# Lua's Makefile for linux-noreadline, every object, then the interpreter.
{
	echo "# $(basename "$srctar"): lua's src/Makefile, target linux-noreadline"
	echo "flags -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX"
	echo "src /$luasrc"
	objs=()
	for c in $(cd "$stage/root/$luasrc" && ls -1 *.c | LC_ALL=C sort); do
		echo "cc $c"
		[[ $c == luac.c ]] || objs+=("${c%.c}.o")
	done
	echo "link lua ${objs[*]} -lm -Wl,-E -ldl"
} >"$stage/root/build/recipe"
versions+=("src:$(basename "$srctar")")
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
