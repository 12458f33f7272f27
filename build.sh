#!/usr/bin/env bash
# nasmig's single entry point.  Run as root on Debian 12.
#
#   ./build.sh [build]   install what is missing, build patched QEMU, libnasmig.so, tools
#   ./build.sh test      build, then run every test (unit, race, fuzz seeds, C ABI, end to end)
#   ./build.sh unit      unit, race, fuzz-seed and C-ABI tests only (no QEMU build)
#   ./build.sh demo      build, then migrate a guest with and without nasmig and compare
#   ./build.sh bench     build, then run the benchmarks that print figures
#   ./build.sh help
#
# Caches live outside the checkout (NASMIG_CACHE, default /var/cache/nasmig):
# the patched QEMU build is keyed by the QEMU version, the patches, the ABI
# header and the configure line, so an unchanged second run takes seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
# shellcheck source=tools/pins.sh
. tools/pins.sh

CACHE=${NASMIG_CACHE:-/var/cache/nasmig}
OUT=${NASMIG_OUT_DIR:-$here/out}
FIRMWARE=$CACHE/firmware
export PATH=/usr/local/go/bin:$PATH
export GOFLAGS=${GOFLAGS:--mod=mod}

step_start=0
step() { step_start=$(date +%s.%N); printf '\n==> %s\n' "$*"; }
done_step() { printf '    (%.1f s)\n' "$(echo "$(date +%s.%N) - $step_start" | bc)"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# CI keeps only a part of a long run's output: after a failure, print
# each failed Go subtest's own lines again at the end, where they survive.
# $1 is a `go test -v` log; the subtests of a case run one at a time.
# subtest_lines LOG NAME: what test NAME printed in a go test -v log (the
# lines under its "=== RUN", up to the next test's marker).
subtest_lines() {
	awk -v run="=== RUN   $2" '
		$0 == run { on = 1; next }
		on && /^=== (RUN|NAME|PAUSE|CONT) / { on = 0 }
		on { print }' "$1"
}

failed_subtests() {
	local name
	grep -oE -- '--- FAIL: [^ ]+/[^ ]+' "$1" | awk '{print $3}' | while read -r name; do
		printf '\n--- what %s printed (from %s):\n' "$name" "$1"
		{ printf '=== RUN   %s\n' "$name"; subtest_lines "$1" "$name"; } | tail -n 80
	done
}

# failure_recap LOG...: the last thing a failed run prints, short enough to
# survive a CI excerpt that keeps only the end: per failed test (the
# innermost of nested ones) the few lines that say why.  A verbose log
# (go test -v) has a test's lines under its "=== RUN"; a quiet one after
# its "--- FAIL".
failure_recap() {
	local log name names
	for log in "$@"; do
		[ -f "$log" ] || continue
		# A parent fails with its failed subtests: show only those.
		names=$(grep -oE -- '--- FAIL: [^ ]+' "$log" | awk '{print $3}' | sort -u |
			awk '{ n[NR] = $0 } END { for (i = 1; i <= NR; i++) { leaf = 1
				for (j = 1; j <= NR; j++) if (index(n[j], n[i] "/") == 1) leaf = 0
				if (leaf) print n[i] } }')
		for name in $names; do
			printf 'FAILED %s (%s):\n' "$name" "$(basename "$log")"
			if grep -qxF -- "=== RUN   $name" "$log"; then
				subtest_lines "$log" "$name" |
					grep -vE ' took [0-9.]+ s: status|run failed, logs kept|^ *--- (FAIL|PASS|SKIP)|^(FAIL|ok|PASS)' | tail -n 5
			else
				awk -v fail="--- FAIL: $name " '
					index($0, fail) == 1 { on = 1; n = 0; next }
					on && (/^(---|===|FAIL|ok|PASS)/ || ++n > 4) { on = 0 }
					on { print }' "$log"
			fi | cut -c1-300
			# A QEMU that hung: its threads, one line each (CI keeps
			# only the end of a long run's output).
			subtest_lines "$log" "$name" | grep -oE '[^ ()]+[.]stacks[.]txt' | sort -u |
				while read -r stacks; do
					[ -f "$stacks" ] || continue
					printf '    threads of %s (top frames, innermost first):\n' "$(basename "$stacks")"
					stack_digest "$stacks" | cut -c1-300
				done
		done
	done
}

# stack_digest FILE: gdb's "thread apply all bt" as one line per thread,
# its name and innermost six functions.
stack_digest() {
	awk '
		/^Thread [0-9]+ / {
			if (line != "") print line
			name = ""
			if (match($0, /"[^"]*"/)) name = substr($0, RSTART, RLENGTH)
			line = "      T" $2 " " name ":"; n = 0; next
		}
		/^#[0-9]+ / && n < 6 {
			f = $0
			if (f ~ / in /) sub(/.* in /, "", f); else sub(/^#[0-9]+ +/, "", f)
			sub(/ .*/, "", f)
			line = line " " f; n++
		}
		END { if (line != "") print line }' "$1"
}

usage() {
	cat <<EOF
usage: ./build.sh [command]

commands:
  build   (default) install missing packages, build the patched QEMU $NASMIG_QEMU_UPSTREAM,
          libnasmig.so and the tools into $OUT
  test    build, then run all tests: Go unit, race, fuzz seeds, C ABI, end-to-end
          migrations of a real guest, QEMU's own migration-test (default set) with
          libnasmig.so loaded, and the Xen tests (a nested Xen host, guests migrated
          with xl migrate; see test-xen) (the README's test command)
  unit    Go and C-ABI unit tests, fuzz seeds and race tests only: no QEMU build, no
          guest (a minute or two; needs Go, installed by build)
  test-full
          test, then QEMU's migration-test default set as built and --full with
          libnasmig.so loaded, then a QEMU built with AddressSanitizer and the
          end-to-end cases 28c and 30 on it (about 80 minutes more under TCG)
  test-xen
          build, then only the Xen part of test: the Xen test bed (Debian's Xen rebuilt
          with shadow paging, a dom0 root; cached) booted under TCG, and the Xen tests
          in its dom0 (about 8 minutes cold, 3 with the bed cached)
  demo    build, then migrate a guest with and without nasmig and print a comparison
  bench   build, then run the benchmarks (figures printed, nothing asserted on time)
  bench-migration [--quick] [nasmig-demo flags]
          build, then migrate a 2 GiB guest with 1200 MiB of page cache in every stock
          mode and with nasmig, 3 runs each, on three emulated networks (namespaces
          and tc: fast-storage, equal-links, 10g); other workloads, a compiler on a disk of real
          files, and the destination's fetch alone beside a plain reader: medians,
          ratios to stock pre-copy on the same network, Markdown and CSV in
          \$NASMIG_CACHE/bench/* (about 3 hours under TCG; --quick: fast-storage,
          3 modes, 1 run, and the fetch alone: about 8 minutes)
  check-series
          build the pinned QEMU once per patch of qemu-patches/series, each on top of
          the ones before it, so that every patch builds on its own (by hand when the
          patches change; not part of test)
  help    this text

environment: NASMIG_CACHE (default /var/cache/nasmig), NASMIG_OUT_DIR (default ./out),
             NASMIG_ACCEL=kvm|tcg to skip the accelerator probe, NASMIG_KEEP=DIR to keep logs
EOF
}

# ---------------------------------------------------------------- packages
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		die "need root to run: $*"
	fi
}

PKGS="ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev flex bison pkg-config zlib1g-dev
libzstd-dev python3-venv seabios dpkg-dev e2fsprogs iproute2 xz-utils zstd cpio bc gcc make
binutils libgnutls28-dev openssl ovmf ipxe-qemu libxen-dev libaio-dev debootstrap"
BACKPORT_PKGS="meson python3-pycotap"

ensure_packages() {
	local src=/etc/apt/sources.list.d/nasmig.sources missing=() p
	if [ ! -f "$src" ]; then
		step "adding Debian entries: bookworm-backports (binary) and trixie (source only)"
		as_root tee "$src" >/dev/null <<'EOF'
# Added by nasmig's build.sh.  Backports never upgrade anything unless asked
# for with -t; the trixie entry is source-only (for the pinned QEMU source).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
		as_root apt-get update -q
		done_step
	fi
	for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	if [ ${#missing[@]} -gt 0 ]; then
		step "installing ${missing[*]}"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
			|| { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
		done_step
	fi
	missing=()
	for p in $BACKPORT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	local mv
	mv=$(meson --version 2>/dev/null || echo 0)
	if [ ${#missing[@]} -gt 0 ] || ! printf '%s\n%s\n' "$NASMIG_MESON_MIN" "$mv" | sort -V -C; then
		step "installing from bookworm-backports: $BACKPORT_PKGS"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports $BACKPORT_PKGS
		done_step
	fi
	command -v go >/dev/null || die "Go is missing (expected /usr/local/go)"
}

# ---------------------------------------------------------------- QEMU
# One build serves KVM/TCG and Xen: with --enable-xen the same binary is a
# Xen device model (device_model_override), and libxl always passes -vnc
# (at least "-vnc none"), so VNC (which needs pixman) is built in; a Xen
# disk with direct-io-safe (host page cache bypassed, as nasmig needs)
# opens with aio=native, so Linux AIO is built in.
CONFIGURE_ARGS="--python=/usr/bin/python3 --target-list=x86_64-softmmu --without-default-features
--enable-kvm --enable-xen --enable-vnc --enable-pixman --enable-linux-aio --enable-tcg --enable-plugins --enable-zstd --enable-gnutls --enable-tools --disable-docs
--disable-werror --disable-download --disable-install-blobs --firmwarepath=$FIRMWARE:/usr/share/seabios"
QEMU_TARGETS="qemu-system-x86_64 qemu-img qemu-nbd storage-daemon/qemu-storage-daemon"

qemu_key() {
	{
		echo "$NASMIG_QEMU_VERSION"
		echo "$CONFIGURE_ARGS"
		cat qemu-patches/series
		while read -r p; do [ -n "$p" ] && cat "qemu-patches/$p"; done <qemu-patches/series
		cat cshim/nasmig.h
	} | sha256sum | cut -c1-16
}

fetch_qemu_source() {
	local dir=$CACHE/src dsc
	dsc=$dir/qemu_${NASMIG_QEMU_VERSION#*:}.dsc
	if [ ! -f "$dsc" ]; then
		step "fetching QEMU source $NASMIG_QEMU_VERSION (apt-get source, Debian patches applied)"
		mkdir -p "$dir"
		(cd "$dir" && apt-get source -q --download-only "qemu=$NASMIG_QEMU_VERSION") \
			|| die "apt-get source qemu=$NASMIG_QEMU_VERSION failed (is the trixie deb-src entry reachable?)"
		done_step
	fi
	QEMU_DSC=$dsc
}

# unpack_qemu TREE: the pinned QEMU source (Debian's patches applied) in TREE.
unpack_qemu() {
	local tree=$1
	mkdir -p "$(dirname "$tree")"
	dpkg-source -x "$QEMU_DSC" "$tree" >/dev/null
}

# check_abi_header TREE: the ABI header the host-glue patch adds to QEMU must
# be the library's (one home: cshim/nasmig.h); a patched tree with another
# one would build a QEMU that disagrees with libnasmig.so.
check_abi_header() {
	cmp -s cshim/nasmig.h "$1/include/nasmig/nasmig.h" \
		|| die "cshim/nasmig.h differs from the include/nasmig/nasmig.h that qemu-patches/ adds: put the new header into the host-glue patch (it adds that file)"
}

# configure_qemu TREE BUILD [ARG...]: CONFIGURE_ARGS and ARGs, in BUILD.
configure_qemu() {
	local tree=$1 build=$2
	shift 2
	mkdir -p "$build"
	# shellcheck disable=SC2086
	(cd "$build" && "$tree/configure" $CONFIGURE_ARGS "$@" >configure.log 2>&1) \
		|| { tail -30 "$build/configure.log"; die "QEMU configure $* failed (log: $build/configure.log)"; }
}

# ninja_qemu BUILD LOG FAILURE TARGET...: builds the targets, logging to
# BUILD/LOG; on failure prints the errors and dies with FAILURE.
ninja_qemu() {
	local build=$1 log=$2 failure=$3
	shift 3
	(cd "$build" && ninja "$@" >"$log" 2>&1) \
		|| { grep -E "error|FAILED" -A3 "$build/$log" | head -40; die "$failure (log: $build/$log)"; }
}

build_qemu() {
	local key tree build
	key=$(qemu_key)
	build=$CACHE/qemu-build-$key
	QEMU_BUILD=$build
	if [ -f "$build/.nasmig-built" ]; then
		echo "QEMU: cached build $build (key $key)"
		return
	fi
	fetch_qemu_source
	tree=$CACHE/qemu-src-$key
	step "unpacking and patching QEMU into $tree"
	rm -rf "$tree" "$build"
	unpack_qemu "$tree"
	while read -r p; do
		[ -n "$p" ] || continue
		patch -d "$tree" -p1 --dry-run -s <"qemu-patches/$p" >/dev/null 2>&1 \
			|| die "patch qemu-patches/$p does not apply to QEMU $NASMIG_QEMU_VERSION"
		patch -d "$tree" -p1 -s <"qemu-patches/$p"
		echo "    applied $p"
	done <qemu-patches/series
	check_abi_header "$tree"
	done_step
	step "configuring QEMU"
	configure_qemu "$tree" "$build"
	done_step
	step "building QEMU ($QEMU_TARGETS)"
	# shellcheck disable=SC2086
	ninja_qemu "$build" build.log "QEMU build failed" $QEMU_TARGETS
	done_step
	step "building x86 option ROMs (linuxboot_dma.bin, kvmvapic.bin, ...)"
	mkdir -p "$build/optionrom"
	ln -sf "$tree/pc-bios/optionrom/Makefile" "$build/optionrom/Makefile"
	printf 'TOPSRC_DIR=%s\nEXTRA_CFLAGS=\n' "$tree" >"$build/optionrom/config.mak"
	printf 'CC=cc\nCCAS=cc\nAR=ar\nAS=as\nLD=ld\nNM=nm\nOBJCOPY=objcopy\nRANLIB=ranlib\nSTRIP=strip\n' >"$build/optionrom/config-cc.mak"
	cat >>"$build/optionrom/config-cc.mak" <<'EOF'
override CFLAGS += -fcf-protection=none
override CFLAGS += -fno-pie
override CFLAGS += -no-pie
override CFLAGS += -fno-stack-protector
override CFLAGS += -Wno-array-bounds
EOF
	make -s -C "$build/optionrom" >/dev/null || die "option ROM build failed"
	done_step
	touch "$build/.nasmig-built"
	# Older builds of other keys are dead weight.
	find "$CACHE" -maxdepth 1 \( -name 'qemu-build-*' -o -name 'qemu-asan-*' -o -name 'qemu-src-*' \) ! -name "*-$key" -exec rm -rf {} + 2>/dev/null || true
}

# build_qemu_asan: the same patched tree configured with --enable-asan, in
# a build folder of its own, for test-full's AddressSanitizer cases (QEMU's
# glue and the library's C instrumented together).
build_qemu_asan() {
	local key tree build
	key=$(qemu_key)
	tree=$CACHE/qemu-src-$key
	build=$CACHE/qemu-asan-$key
	QEMU_ASAN=$build/qemu-system-x86_64
	if [ -f "$build/.nasmig-built" ]; then
		echo "QEMU with AddressSanitizer: cached build $build"
		return
	fi
	[ -d "$tree" ] || die "patched QEMU tree $tree is missing: run ./build.sh build first"
	step "building QEMU with AddressSanitizer ($build)"
	rm -rf "$build"
	configure_qemu "$tree" "$build" --enable-asan
	ninja_qemu "$build" build.log "QEMU ASan build failed" qemu-system-x86_64
	touch "$build/.nasmig-built"
	done_step
}

install_firmware() {
	mkdir -p "$FIRMWARE/keymaps"
	cp -u "$QEMU_BUILD"/optionrom/*.bin "$FIRMWARE/"
	# VNC loads a keymap even for "-vnc none", which Xen's toolstack
	# passes to every device model.
	cp -u "$CACHE/qemu-src-${QEMU_BUILD##*-}"/pc-bios/keymaps/[a-z]* "$FIRMWARE/keymaps/"
	rm -f "$FIRMWARE/keymaps/meson.build"
}

# ---------------------------------------------------------------- Go
build_go() {
	step "building libnasmig.so and the tools"
	mkdir -p "$OUT"
	go build -buildmode=c-shared -o "$OUT/libnasmig.so" ./plugin
	# Test-only: the same library under AddressSanitizer (one e2e case).
	go build -asan -buildmode=c-shared -o "$OUT/libnasmig-asan.so" ./plugin
	rm -f "$OUT/libnasmig.h" "$OUT/libnasmig-asan.h"
	for t in tools/*/; do
		t=${t%/}
		[ -f "$t/main.go" ] && go build -o "$OUT/$(basename "$t")" "./$t"
	done
	for b in qemu-system-x86_64 qemu-img qemu-nbd storage-daemon/qemu-storage-daemon; do
		ln -sf "$QEMU_BUILD/$b" "$OUT/$(basename "$b")"
	done
	ln -sfn "$FIRMWARE" "$OUT/firmware"
	done_step
}

do_build() {
	local t0
	t0=$(date +%s)
	ensure_packages
	build_qemu
	install_firmware
	build_go
	cat <<EOF

nasmig is built ($(($(date +%s) - t0)) s):
  QEMU (patched)   $OUT/qemu-system-x86_64   (build dir $QEMU_BUILD)
  tools            $OUT/qemu-img $OUT/qemu-nbd $OUT/qemu-storage-daemon
  library          $OUT/libnasmig.so
  firmware         $FIRMWARE (and /usr/share/seabios)
Use:  $OUT/qemu-system-x86_64 -plugin $OUT/libnasmig.so ...
EOF
}

# ---------------------------------------------------------------- guest and tests
GUEST=$CACHE/guest
build_guest() {
	step "guest image (kernel from Debian, our init, data disks)"
	NASMIG_GUEST_CACHE="$CACHE/guest-cache" NASMIG_QEMU_IMG="$OUT/qemu-img" bash tests/guest/mkguest.sh "$GUEST"
	done_step
}

test_env() {
	export NASMIG_OUT=$OUT NASMIG_GUEST=$GUEST
	export NASMIG_QEMU_DATADIRS=$FIRMWARE:/usr/share/seabios
}

# unit_tests: vet, Go and C-ABI unit tests with the fuzzers' seeds, the same
# under -race. Tests that need the built QEMU or guest say so and skip
# when run without them (./build.sh unit).
unit_tests() {
	local fail=0
	step "go vet"
	go vet ./... || fail=1
	done_step
	step "unit tests (Go, C ABI, fuzz seeds)"
	go test -count=1 ./cshim/... ./plugin/... ./tools/... ./tests/guest/... ./tests/harness/... ./tests/qemustart/... 2>&1 |
		tee "${LOGS:-/tmp}/unit.log" || fail=1
	done_step
	step "race tests"
	go test -count=1 -race ./cshim/... ./plugin/... ./tools/nasmig-xl/... ./tests/harness/... 2>&1 |
		tee "${LOGS:-/tmp}/race.log" || fail=1
	done_step
	return $fail
}

do_unit() {
	local t0 fail=0
	t0=$(date +%s)
	command -v go >/dev/null || die "Go is not installed: run ./build.sh build once"
	unit_tests || fail=1
	printf '\n%s after %d s\n' "$([ $fail = 0 ] && echo "UNIT TESTS PASSED" || echo "UNIT TESTS FAILED")" $(($(date +%s) - t0))
	return $fail
}

do_test() {
	local t0 fail=0
	LOGS=${NASMIG_LOGS:-$CACHE/test-logs}
	mkdir -p "$LOGS"
	rm -f "$LOGS"/{unit,race,e2e,e2e-asan,xen}.log
	t0=$(date +%s)
	do_build
	build_guest
	test_env
	unit_tests || fail=1
	step "end-to-end migrations of a real guest${1:+ (all cases)}"
	# test-full also runs the cases that vary another (fullOnly in e2e_test.go).
	NASMIG_E2E_FULL=$([ "${1:-}" = full ] && echo 1 || echo 0) go test -count=1 -v -timeout 80m ./tests/e2e/... 2>&1 |
		tee "$LOGS/e2e.log" || fail=1
	done_step
	step "QEMU's own migration-test, default set, with libnasmig.so loaded"
	qemu_suite "" on || fail=1
	done_step
	xen_tests || fail=1
	if [ "${1:-}" = full ]; then
		step "QEMU's own migration-test, default set, as built (the baseline)"
		qemu_suite "" off || fail=1
		done_step
		step "QEMU's own migration-test --full with libnasmig.so loaded"
		qemu_suite --full on || fail=1
		done_step
		build_qemu_asan
		step "end-to-end cases with QEMU and the library under AddressSanitizer"
		NASMIG_QEMU_ASAN=$QEMU_ASAN go test -count=1 -v -timeout 40m -run 'TestMigrations/(28c|30)-' ./tests/e2e/... 2>&1 |
			tee "$LOGS/e2e-asan.log" || fail=1
		done_step
	fi
	if [ $fail != 0 ]; then
		for log in "$LOGS/e2e.log" "$LOGS/e2e-asan.log" "$LOGS/xen.log"; do
			if [ -f "$log" ]; then failed_subtests "$log" || true; fi
		done
		printf '\n==> failure recap\n'
		failure_recap "$LOGS"/{unit,race,e2e,e2e-asan,xen}.log || true
	fi
	printf '\n%s after %d s\n' "$([ $fail = 0 ] && echo "ALL TESTS PASSED" || echo "TESTS FAILED")" $(($(date +%s) - t0))
	return $fail
}

# QEMU's own migration suite is the conformance floor: every case that
# passes on the build as it is must pass with libnasmig.so loaded (defaults).
SUITE_DATADIRS="$FIRMWARE:/usr/share/seabios:/usr/lib/ipxe/qemu"
suite_accel() {
	if [ -n "${NASMIG_ACCEL:-}" ]; then
		echo "$NASMIG_ACCEL"
		return
	fi
	# One case with KVM allowed, as the suite would run it; on this kind of
	# machine (nested PVM) KVM cannot run the guest and TCG is used.
	if NASMIG_SUITE_QEMU="$QEMU_BUILD/qemu-system-x86_64" QTEST_QEMU_BINARY="$here/tests/qemu-suite/qemu-system-x86_64" \
		NASMIG_SUITE_DATADIRS="$SUITE_DATADIRS" timeout 60 "$QEMU_BUILD/tests/qtest/migration-test" \
		-p /x86_64/migration/precopy/unix/plain >/dev/null 2>&1; then
		echo kvm
	else
		echo tcg
	fi
}

# qemu_suite SET PLUGIN: runs QEMU's migration-test (SET: "" for its default
# set, or --full) through tests/qemu-suite/qemu-system-x86_64, with
# libnasmig.so loaded (PLUGIN=on) or not; every case must pass.
qemu_suite() {
	local set=$1 plugin=$2 accel lib="" tap t0 rc=0
	(cd "$QEMU_BUILD" && ninja tests/qtest/migration-test >/dev/null) || die "building QEMU's migration-test failed"
	[ -n "${SUITE_ACCEL:-}" ] || SUITE_ACCEL=$(suite_accel)
	accel=$SUITE_ACCEL
	[ "$plugin" = on ] && lib=$OUT/libnasmig.so
	tap=$LOGS/migration-test${set}${lib:+-nasmig}.tap
	echo "    migration-test ${set:-default set}, ${lib:+with libnasmig.so (defaults), }accelerator $accel"
	t0=$(date +%s)
	# From the build folder: the suite finds scripts/analyze-migration.py there.
	(cd "$QEMU_BUILD" && NASMIG_SUITE_QEMU="$QEMU_BUILD/qemu-system-x86_64" NASMIG_SUITE_PLUGIN="$lib" \
		NASMIG_SUITE_ACCEL="$accel" NASMIG_SUITE_DATADIRS="$SUITE_DATADIRS" PYTHON=/usr/bin/python3 \
		QTEST_QEMU_BINARY="$here/tests/qemu-suite/qemu-system-x86_64" QTEST_QEMU_IMG="$QEMU_BUILD/qemu-img" \
		"$QEMU_BUILD/tests/qtest/migration-test" $set --tap -k >"$tap" 2>&1) || rc=1
	grep -E "^(ok|not ok)" "$tap" | sed 's/^/      /'
	grep -q "^not ok" "$tap" && rc=1
	grep -qE "^1\.\.[0-9]+" "$tap" || { echo "      no test plan in $tap: the suite did not start"; rc=1; }
	printf '      (%d s; log %s)\n' $(($(date +%s) - t0)) "$tap"
	return $rc
}

do_demo() {
	do_build
	build_guest
	test_env
	step "demo: migrating a guest whose page cache holds disk data, with and without nasmig"
	"$OUT/nasmig-demo" "$@"
}

do_bench_migration() {
	do_build
	build_guest
	test_env
	# Every stock mode and nasmig on each emulated network (network
	# namespaces and tc, torn down at the end), medians of 3 runs; the
	# other workloads and the disk of real files (reading it, and a compiler
	# building from it) on the usual data-center
	# network; the destination's fetch alone beside a plain reader; guests
	# of 2 to 16 GiB.  About 3 hours.  --quick: one network, the three modes that matter most,
	# one run each, and the fetch alone (about 8 minutes).  Every part
	# defers the machine's free page reporting and touches memory before
	# each run (-warm-memory, see tools/nasmig-demo/hostmem.go) and counts
	# the pages a reference could cover (-oracle).
	local out=$CACHE/bench dir
	local -a parts
	if [ "${1:-}" = --quick ]; then
		shift
		parts=(
			"matrix|-profiles fast-storage -modes stock,multifd-zstd,nasmig -runs 1"
			"fetch|-fetch-bench -profiles fast-storage -runs 1"
		)
	else
		parts=(
			"matrix|-profiles fast-storage,equal-links,10g -modes stock,multifd-zstd,xbzrle,postcopy,free-page-hint,nasmig,nasmig-no-hand-back,nasmig-multifd-zstd,nasmig-free-page-hint -runs 3"
			"workloads|-profiles fast-storage -workloads mixed,pagecache-write,reader,memory-hot,idle -modes stock,multifd-zstd,nasmig -runs 3"
			"real|-disk real -profiles fast-storage,equal-links -workloads pagecache-read,compile -modes stock,multifd-zstd,nasmig,nasmig-multifd-zstd -runs 3"
			"fetch|-fetch-bench -profiles fast-storage,equal-links,10g -runs 3"
		)
		step "the disk of real files (Debian packages' contents)"
		NASMIG_REAL_DEBS=$CACHE/real-debs bash tests/guest/mkrealdisk.sh "$GUEST" || die "cannot build the real-files disk"
		done_step
	fi
	for part in "${parts[@]}"; do
		dir=$out/${part%%|*}
		# shellcheck disable=SC2206
		local -a set=(${part#*|})
		step "migration benchmark, ${part%%|*}: ${set[*]}"
		"$OUT/nasmig-demo" -warm-memory -oracle "${set[@]}" -out "$dir" "$@" || die "benchmark part ${part%%|*} failed (results so far in $dir)"
		done_step
	done
	if [ ${#parts[@]} -gt 2 ]; then
		# Scale: 2 to 16 GiB guests, page cache ~60% of RAM, on a larger
		# disk of the same kind (about 17 minutes; two 16 GiB guests fit
		# a 24 GiB host because only the page cache is touched).
		step "the scale disk (9900 MiB of files)"
		NASMIG_GUEST_DATA_MIB=9900 NASMIG_GUEST_DISK_MIB=10400 NASMIG_GUEST_CACHE="$CACHE/guest-cache" \
			bash tests/guest/mkguest.sh "$CACHE/guest-scale" || die "cannot build the scale disk"
		done_step
		local size
		for size in 2048:1200 8192:4900 12288:7300 16384:9800; do
			step "migration benchmark, scale: ${size%%:*} MiB guest, ${size#*:} MiB page cache"
			NASMIG_GUEST=$CACHE/guest-scale "$OUT/nasmig-demo" -warm-memory -profiles fast-storage -modes stock,nasmig \
				-mem "${size%%:*}" -mib "${size#*:}" -runs 1 -out "$out/scale/m${size%%:*}" "$@" ||
				die "benchmark part scale failed (results so far in $out/scale)"
			done_step
		done
	fi
	echo "results: $out/*/{results,fetch}.{md,csv} $out/scale/*/results.md"
}

# do_check_series: QEMU built once per patch of the series, each on top of
# the ones before it (QEMU's maintainers bisect; every patch must build on
# its own). By hand when the patches change, not in CI.
do_check_series() {
	local dir=$CACHE/check-series tree build p n=0 t0
	t0=$(date +%s)
	tree=$dir/src
	build=$dir/build
	ensure_packages
	fetch_qemu_source
	step "unpacking the pinned QEMU into $tree"
	rm -rf "$dir"
	unpack_qemu "$tree"
	done_step
	step "configuring QEMU"
	configure_qemu "$tree" "$build"
	done_step
	step "building QEMU without the series"
	# shellcheck disable=SC2086
	ninja_qemu "$build" build-0.log "stock QEMU does not build" $QEMU_TARGETS tests/qtest/migration-test
	done_step
	while read -r p; do
		[ -n "$p" ] || continue
		n=$((n + 1))
		step "building with the series up to $p"
		patch -d "$tree" -p1 -s <"qemu-patches/$p" || die "$p does not apply on top of the patches before it"
		# shellcheck disable=SC2086
		ninja_qemu "$build" "build-$n.log" "QEMU does not build with the series up to $p" $QEMU_TARGETS tests/qtest/migration-test
		done_step
	done <qemu-patches/series
	check_abi_header "$tree"
	echo
	echo "each of the $n patches builds on top of the ones before it ($(($(date +%s) - t0)) s; tree and logs in $dir)"
}

do_bench() {
	do_build
	test_env
	step "micro-benchmarks and memory footprint"
	NASMIG_BENCH=1 go test -count=1 -run 'MicroBench|MemoryFootprint' -v ./plugin/... | grep -vE '^(=== RUN|--- PASS|PASS|ok )' || true
	go test -count=1 -run '^$' -bench . -benchtime 2s ./cshim/... ./plugin/...
}

# do_test_xen: the Xen test bed (tests/xen/mkxenbed.sh: Debian's Xen
# rebuilt with shadow paging, a dom0 root) booted under QEMU with TCG, and
# the Xen tests in its dom0 (./build.sh test runs them too, after the rest).
# xen_tests: the Xen test bed (cached) and the tests that boot it.
xen_tests() {
	local fail=0
	step "Xen test bed (hypervisor with shadow paging, dom0 root; cached)"
	bash tests/xen/mkxenbed.sh "$CACHE/xenbed" || die "cannot build the Xen test bed"
	done_step
	step "Xen tests (a Xen host under TCG, guests migrated with xl migrate)"
	mkdir -p "${LOGS:=$CACHE/test-logs}"
	NASMIG_XENBED=$CACHE/xenbed go test -count=1 -v -timeout 45m ./tests/xen/... 2>&1 | tee "$LOGS/xen.log" || fail=1
	done_step
	return $fail
}

do_test_xen() {
	local t0 fail=0
	t0=$(date +%s)
	do_build
	build_guest
	test_env
	xen_tests || fail=1
	printf '\n%s after %d s\n' "$([ $fail = 0 ] && echo "XEN TESTS PASSED" || echo "XEN TESTS FAILED")" $(($(date +%s) - t0))
	return $fail
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
build) do_build ;;
test) do_test ;;
unit) do_unit ;;
test-full) do_test full ;;
test-xen) do_test_xen ;;
demo) do_demo "$@" ;;
bench) do_bench ;;
bench-migration) do_bench_migration "$@" ;;
check-series) do_check_series ;;
help | -h | --help) usage ;;
*)
	echo "build.sh: unknown command '$cmd'" >&2
	usage >&2
	exit 2
	;;
esac
