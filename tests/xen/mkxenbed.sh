#!/usr/bin/env bash
# mkxenbed.sh OUTDIR: a Xen host for nasmig's Xen tests, booted later under
# QEMU (TCG) by tests/xen.  Everything comes from Debian bookworm's
# packages and Debian's source package of Xen:
#   xen          the hypervisor, rebuilt with shadow paging (Debian's
#                binaries lack it; under TCG there is no HAP, and PV live
#                migration needs log-dirty through shadow paging)
#   vmlinuz, initrd.img  dom0's kernel and initramfs (Debian's)
#   dom0.img     ext4 root of dom0: bookworm minbase, the Xen tools of the
#                same version as the hypervisor, our /init (dom0-init.sh)
#   verify-stream  upstream's verify-stream-v2 and its Python modules
#   xen.info     versions
# Cached: nothing is rebuilt while the inputs (versions, this folder's
# files) are unchanged.
#
# Environment: NASMIG_XEN_VERSION (tools/pins.sh), NASMIG_XEN_CACHE (where
# the source and the root tree are kept; default OUTDIR/.cache).
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../../tools/pins.sh
. "$ROOT/tools/pins.sh"
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
CACHE=${NASMIG_XEN_CACHE:-$OUT/.cache}
MIRROR=http://deb.debian.org/debian

die() { echo "xenbed: error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
STEP_T0=
step() { STEP_NAME=$1; STEP_T0=$(now); echo "xenbed: $1 ..."; }
step_done() { echo "xenbed: $STEP_NAME done in $(since "$STEP_T0") s"; }

for tool in debootstrap dpkg-source mkfs.ext4 make gcc bison flex chroot; do
	command -v "$tool" >/dev/null || die "$tool not found (build.sh installs it)"
done

KEY=$(
	{
		echo "xen $NASMIG_XEN_VERSION bookworm"
		cd "$HERE" && sha256sum mkxenbed.sh dom0-init.sh
	} | sha256sum | cut -d' ' -f1
)
if [[ -f $OUT/.key && $(cat "$OUT/.key") == "$KEY" && -f $OUT/xen && -f $OUT/dom0.img && -f $OUT/verify-stream/verify-stream-v2 ]]; then
	echo "xenbed: up to date ($OUT)"
	exit 0
fi
rm -f "$OUT/.key"
mkdir -p "$CACHE"
T_ALL=$(now)

step "hypervisor $NASMIG_XEN_VERSION with shadow paging"
SRC=$CACHE/src
if [[ ! -f $SRC/.built-$NASMIG_XEN_VERSION ]]; then
	rm -rf "$SRC"
	mkdir -p "$SRC/apt/lists/partial"
	# A private APT configuration with bookworm's deb-src entry: the
	# host's own sources stay as they are.
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main" >"$SRC/apt/sources.list"
	cat >"$SRC/apt/apt.conf" <<EOF
Dir::Etc::SourceList "$SRC/apt/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$SRC/apt/lists";
EOF
	export APT_CONFIG=$SRC/apt/apt.conf
	apt-get update -q || die "apt-get update (bookworm deb-src) failed"
	(cd "$SRC" && apt-get source -q --download-only "xen=$NASMIG_XEN_VERSION") || die "apt-get source xen=$NASMIG_XEN_VERSION failed"
	unset APT_CONFIG
	(cd "$SRC" && dpkg-source -q -x --no-check xen_*.dsc tree) || die "dpkg-source -x failed"
	cp "$SRC/tree/debian/xen-kconfig" "$SRC/tree/xen/.config"
	echo "CONFIG_SHADOW_PAGING=y" >>"$SRC/tree/xen/.config"
	make -s -C "$SRC/tree/xen" olddefconfig >"$SRC/build.log" 2>&1 || die "xen olddefconfig failed ($SRC/build.log)"
	grep -q '^CONFIG_SHADOW_PAGING=y' "$SRC/tree/xen/.config" || die "shadow paging did not stay in the configuration"
	make -C "$SRC/tree/xen" -j"$(nproc)" >>"$SRC/build.log" 2>&1 || die "hypervisor build failed ($SRC/build.log)"
	touch "$SRC/.built-$NASMIG_XEN_VERSION"
fi
cp "$SRC/tree/xen/xen" "$OUT/xen.tmp" && mv "$OUT/xen.tmp" "$OUT/xen"
# Upstream's stream checker, run by the tests on captured streams.
rm -rf "$OUT/verify-stream"
mkdir -p "$OUT/verify-stream"
cp -r "$SRC/tree/tools/python/xen" "$OUT/verify-stream/xen"
cp "$SRC/tree/tools/python/scripts/verify-stream-v2" "$OUT/verify-stream/"
step_done

step "dom0 root tree (debootstrap bookworm minbase, Xen tools)"
RFS=$CACHE/rootfs
DOM0_PKGS="xen-utils-4.17=$NASMIG_XEN_VERSION xen-utils-common=$NASMIG_XEN_VERSION xenstore-utils=$NASMIG_XEN_VERSION
linux-image-amd64 busybox iproute2 kmod procps e2fsprogs seabios"
if [[ ! -f $RFS/.nasmig-$NASMIG_XEN_VERSION || $(cat "$RFS/.nasmig-$NASMIG_XEN_VERSION") != "$DOM0_PKGS" ]]; then
	rm -rf "$RFS"
	debootstrap --variant=minbase bookworm "$RFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
		die "debootstrap failed ($CACHE/debootstrap.log)"
	# bookworm main only: its Xen tools are the hypervisor's version.
	echo "deb $MIRROR bookworm main" >"$RFS/etc/apt/sources.list"
	# shellcheck disable=SC2086
	chroot "$RFS" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(echo $DOM0_PKGS)" \
		>"$CACHE/chroot.log" 2>&1 ||
		die "installing the Xen tools into dom0 failed ($CACHE/chroot.log)"
	chroot "$RFS" apt-get clean
	echo "$DOM0_PKGS" >"$RFS/.nasmig-$NASMIG_XEN_VERSION"
fi
install -m 0755 "$HERE/dom0-init.sh" "$RFS/init.sh"
step_done

step "dom0 image"
cp "$(ls "$RFS"/boot/vmlinuz-* | head -1)" "$OUT/vmlinuz"
cp "$(ls "$RFS"/boot/initrd.img-* | head -1)" "$OUT/initrd.img"
rm -f "$OUT/dom0.img.tmp"
truncate -s 2G "$OUT/dom0.img.tmp"
mkfs.ext4 -q -F -L dom0 -d "$RFS" "$OUT/dom0.img.tmp"
mv "$OUT/dom0.img.tmp" "$OUT/dom0.img"
{
	echo "xen $NASMIG_XEN_VERSION (CONFIG_SHADOW_PAGING=y)"
	chroot "$RFS" dpkg-query -W -f '${Package} ${Version}\n' xen-utils-4.17 linux-image-amd64
} >"$OUT/xen.info"
step_done

echo "$KEY" >"$OUT/.key"
echo "xenbed: built in $(since "$T_ALL") s: $(tr '\n' ';' <"$OUT/xen.info")"
