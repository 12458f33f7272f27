#!/usr/bin/env bash
# mkguest.sh OUTDIR: build the nasmig test guest into OUTDIR
# (docs/testbed-contract.md, "Guest artifacts"):
#   vmlinuz          Debian's 6.1 kernel, from the package (downloaded, never installed)
#   initrd.img       newc cpio + gzip: /init (tests/guest/init), /modules/*.ko + /modules/order
#   data.raw         ext4 without partition table, deterministic files + /manifest.sha256
#   data.qcow2       the same, when NASMIG_QEMU_IMG names an executable qemu-img
#   manifest.sha256  copy of the disk's manifest
#   inputs.sha256    cache key: content of tests/guest/**, kernel package and version,
#                    Go version, sizes. When it matches, nothing is rebuilt.
#
# Environment:
#   NASMIG_GUEST_DATA_MIB  MiB of file content on the data disk (default 1300)
#   NASMIG_GUEST_DISK_MIB  size of the data disk (default 2048)
#   NASMIG_GUEST_CACHE     where kernel packages are downloaded and unpacked
#                          (default /var/cache/nasmig/guest-cache)
#   NASMIG_QEMU_IMG        qemu-img used to make data.qcow2 (optional)
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATA_MIB=${NASMIG_GUEST_DATA_MIB:-1300}
DISK_MIB=${NASMIG_GUEST_DISK_MIB:-2048}
CACHE=${NASMIG_GUEST_CACHE:-/var/cache/nasmig/guest-cache}

# Modules the guest loads, as NAME[:CONFIG_SYMBOL][?] (see guesttool
# modules): a root built into the kernel (CONFIG_SYMBOL=y) is skipped, '?'
# marks optional ones. Dependencies come from each module's .modinfo.
MODULE_ROOTS=(
	"crc32c_generic:CRYPTO_CRC32C"          # ext4/jbd2 metadata checksums (no modprobe in the guest)
	"crct10dif_generic:CRYPTO_CRCT10DIF?"
	"crc64_rocksoft_generic:CRYPTO_CRC64_ROCKSOFT?"
	"virtio_pci:VIRTIO_PCI"
	"virtio_blk:VIRTIO_BLK"                 # if=virtio -> /dev/vda
	"virtio_scsi:SCSI_VIRTIO"               # virtio-scsi-pci + scsi-hd -> /dev/sda
	"ahci:SATA_AHCI"                        # ahci/ide-hd (q35's own ICH9 AHCI too) -> /dev/sda
	"ata_piix:ATA_PIIX?"                    # PIIX IDE (a Xen HVM guest's emulated disk) -> /dev/sda
	"sd_mod:BLK_DEV_SD"
	"ext4:EXT4_FS"
	"virtio_balloon:VIRTIO_BALLOON?"        # free page hinting (the benchmark's free-page-hint modes)
	"xen_blkfront:XEN_BLKDEV_FRONTEND?"     # the Xen test bed's PV guests -> /dev/xvda
)

die() { echo "guest: error: $*" >&2; exit 1; }
now() { date +%s.%N; }
STEP_T0=
step() { STEP_NAME=$1; STEP_T0=$(now); echo "guest: $1 ..."; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step_done() { echo "guest: $STEP_NAME done in $(since "$STEP_T0") s"; }

for tool in go dpkg-deb mkfs.ext4 truncate gzip flock awk sha256sum; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v cpio >/dev/null; then
	echo "guest: installing cpio"
	apt-get install -y -qq cpio >/dev/null || die "cannot install cpio"
fi

OUT=$(mkdir -p "$1" && cd "$1" && pwd)
exec 9>"$OUT/.lock"
flock 9

# The kernel package: what linux-image-amd64 depends on when that is a
# linux-image-6.1.0-N-amd64, else the newest such package with a candidate
# version. Prints "PKG VERSION".
resolve_kernel() {
	local dep pkg ver
	dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
		sed -n 's/^Depends:.*\(linux-image-6\.1\.0-[0-9]*-amd64\) (= \([^)]*\)).*/\1 \2/p' | head -1)
	if [[ -n $dep ]]; then
		echo "$dep"
		return 0
	fi
	for pkg in $(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -rV); do
		ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
		if [[ -n $ver && $ver != "(none)" ]]; then
			echo "$pkg $ver"
			return 0
		fi
	done
	return 1
}

# apt-cache takes about 0.5 s a call here (no pkgcache.bin), so remember the
# answer until apt's package lists or preferences change.
apt_state() {
	stat -c '%n %Y %s' /var/lib/apt/lists/* /etc/apt/preferences* /etc/apt/sources.list* 2>/dev/null | sha256sum | cut -d' ' -f1
}
mkdir -p "$CACHE"
APT_STATE=$(apt_state)
KERNEL=
if [[ -f $CACHE/resolved-kernel ]]; then
	read -r state pkg ver <"$CACHE/resolved-kernel" || true
	if [[ ${state:-} == "$APT_STATE" && -n ${ver:-} ]]; then KERNEL="$pkg $ver"; fi
fi
if [[ -z $KERNEL ]]; then
	KERNEL=$(resolve_kernel) || KERNEL=
	if [[ -z $KERNEL ]]; then
		echo "guest: apt knows no linux-image-6.1.0-*-amd64; running apt-get update"
		apt-get update -qq >/dev/null 2>&1 || true
		APT_STATE=$(apt_state)
		KERNEL=$(resolve_kernel) || KERNEL=
	fi
	if [[ -n $KERNEL ]]; then
		echo "$APT_STATE $KERNEL" >"$CACHE/resolved-kernel"
	fi
fi
if [[ -z $KERNEL ]]; then
	# Offline: fall back to the newest package already downloaded.
	deb=$(ls "$CACHE"/linux-image-6.1.0-*-amd64_*_amd64.deb 2>/dev/null | sort -V | tail -1 || true)
	[[ -n $deb ]] || die "cannot resolve a linux-image-6.1.0-*-amd64 package (apt-get update?)"
	base=$(basename "$deb" _amd64.deb)
	KERNEL="${base%%_*} ${base#*_}"
	KERNEL=${KERNEL//%3a/:}
	echo "guest: apt has no kernel package; using cached $deb"
fi
read -r KPKG KVER <<<"$KERNEL"

KEY=$(
	{
		echo "kernel $KPKG $KVER"
		echo "data-mib $DATA_MIB disk-mib $DISK_MIB"
		go version
		cd "$ROOT" && find tests/guest -type f ! -name '*~' ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	} | sha256sum | cut -d' ' -f1
)

# The data disk depends only on the content generator and the sizes; it is
# reused when they did not change and data.raw was not modified since it was
# built (a guest that booted it writable changes it: boot it with
# snapshot=on or from a copy).
DATA_KEY=$(
	{
		echo "data-mib $DATA_MIB disk-mib $DISK_MIB"
		go version
		cd "$ROOT" && find tests/guest/internal/gen tests/guest/tools/guesttool -type f -name '*.go' ! -name '*_test.go' -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
	} | sha256sum | cut -d' ' -f1
)
data_stamp() { echo "$DATA_KEY $(stat -c '%.9Y %s' "$OUT/data.raw" 2>/dev/null)"; }
data_fresh() {
	[[ -f $OUT/.data-stamp && -f $OUT/data.raw && -f $OUT/manifest.sha256 && $(cat "$OUT/.data-stamp") == "$(data_stamp)" ]]
}

have_qemu_img() { [[ -n ${NASMIG_QEMU_IMG:-} && -x ${NASMIG_QEMU_IMG} ]]; }

make_qcow2() { # SRC DST
	if have_qemu_img; then
		step "qcow2"
		"$NASMIG_QEMU_IMG" convert -O qcow2 "$1" "$2.tmp"
		mv -f "$2.tmp" "$2"
		step_done
	else
		echo "guest: data.qcow2 skipped (NASMIG_QEMU_IMG not set or not executable)"
	fi
}

if [[ -f $OUT/inputs.sha256 && $(cat "$OUT/inputs.sha256") == "$KEY" ]] &&
	[[ -f $OUT/vmlinuz && -f $OUT/initrd.img ]] && data_fresh; then
	if [[ ! -f $OUT/data.qcow2 ]] && have_qemu_img; then
		make_qcow2 "$OUT/data.raw" "$OUT/data.qcow2"
	fi
	echo "guest: up to date ($OUT, $KPKG $KVER)"
	exit 0
fi

(( DATA_MIB + 256 <= DISK_MIB )) || die "NASMIG_GUEST_DATA_MIB=$DATA_MIB does not fit on a $DISK_MIB MiB disk (keep 256 MiB spare)"

T_ALL=$(now)
echo "guest: building into $OUT (kernel $KPKG $KVER, data $DATA_MIB MiB, disk $DISK_MIB MiB)"
rm -f "$OUT/inputs.sha256"
STAGE="$OUT/.stage"
rm -rf "$STAGE"
mkdir -p "$STAGE/root"

step "kernel"
DEB="$CACHE/${KPKG}_${KVER//:/%3a}_amd64.deb"
if [[ ! -f $DEB ]]; then
	(cd "$CACHE" && apt-get download -q "$KPKG=$KVER" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
	[[ -f $DEB ]] || die "apt-get download $KPKG=$KVER did not produce $DEB"
fi
KDIR="$CACHE/unpacked/${KPKG}_${KVER}"
if [[ ! -d $KDIR ]]; then
	rm -rf "$KDIR.tmp"
	mkdir -p "$KDIR.tmp"
	dpkg-deb -x "$DEB" "$KDIR.tmp"
	mv "$KDIR.tmp" "$KDIR"
fi
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KCONFIG=$(ls "$KDIR"/boot/config-* | head -1)
MODDIR=$(ls -d "$KDIR"/lib/modules/* | head -1)
cp "$VMLINUZ" "$STAGE/vmlinuz"
step_done

step "go build (init, guesttool)"
(
	cd "$ROOT"
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$STAGE/root/init" ./tests/guest/init
	go build -o "$STAGE/guesttool" ./tests/guest/tools/guesttool
)
step_done

step "modules"
"$STAGE/guesttool" modules -moddir "$MODDIR" -config "$KCONFIG" -out "$STAGE/root/modules" "${MODULE_ROOTS[@]}"
step_done

step "initramfs"
mkdir -p "$STAGE"/root/{dev,proc,sys,data,tmp}
if [[ $(id -u) -eq 0 ]]; then
	mknod -m 600 "$STAGE/root/dev/console" c 5 1
else
	echo "guest: not root: no /dev/console in the initramfs (init falls back to devtmpfs)"
fi
(cd "$STAGE/root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -6 >"$STAGE/initrd.img"
step_done

if data_fresh; then
	echo "guest: data disk unchanged, reusing $OUT/data.raw"
	if [[ ! -f $OUT/data.qcow2 ]] && have_qemu_img; then
		make_qcow2 "$OUT/data.raw" "$OUT/data.qcow2"
	fi
else
	step "data files ($DATA_MIB MiB)"
	"$STAGE/guesttool" data -out "$STAGE/data" -mib "$DATA_MIB"
	cp "$STAGE/data/manifest.sha256" "$STAGE/manifest.sha256"
	step_done

	step "mkfs.ext4 ($DISK_MIB MiB)"
	truncate -s "${DISK_MIB}M" "$STAGE/data.raw"
	mkfs.ext4 -q -F -b 4096 -L nasmig-data -E lazy_itable_init=0,lazy_journal_init=0 -d "$STAGE/data" "$STAGE/data.raw"
	rm -rf "$STAGE/data"
	step_done

	rm -f "$OUT/data.qcow2" "$OUT/.data-stamp"
	make_qcow2 "$STAGE/data.raw" "$STAGE/data.qcow2"
fi

for f in vmlinuz initrd.img data.raw data.qcow2 manifest.sha256; do
	if [[ -f $STAGE/$f ]]; then mv -f "$STAGE/$f" "$OUT/$f"; fi
done
data_stamp >"$OUT/.data-stamp"
echo "$KEY" >"$OUT/inputs.sha256"
rm -rf "$STAGE"

echo "guest: built in $(since "$T_ALL") s"
for f in vmlinuz initrd.img data.raw data.qcow2 manifest.sha256; do
	[[ -f $OUT/$f ]] || continue
	awk -v f="$f" -v s="$(stat -c %s "$OUT/$f")" -v k="$(du -k "$OUT/$f" | cut -f1)" \
		'BEGIN { printf "guest:   %-16s %8.1f MiB (%.1f MiB allocated)\n", f, s / 1048576, k / 1024 }'
done
