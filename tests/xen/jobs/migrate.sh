#!/bin/sh
# A job for dom0 of the Xen test bed (tests/xen): boot the nasmig test guest
# as a Xen domain whose disk QEMU serves (qdisk, our QEMU with libnasmig.so
# and content-index=on as device model), fill its page cache from the shared
# data disk, then migrate it to localhost twice with the standard
# `xl migrate -s`: first through nasmig-xl (disk references), then through a
# plain pipe (stock xl, the library still loaded).  Afterwards the guest
# checks every file it read, and its heartbeat must go on.
#
# /job/job.env sets GUEST (pv, pvh, hvm), MEM (MiB), MIB (page cache to
# fill), DATA (the shared data disk as dom0 sees it), OVERWRITE (blocks of
# a cached file to overwrite behind the index's back before migrating),
# and optionally WORKLOAD (the guest's: pagecache-read, or mixed, which
# keeps writing blocks of the file it cached, also while it migrates),
# BACKEND (qdisk, or phy: the kernel's blkback), HVM_DISK (emulated, pv),
# STOCK (on, off: the stock migration after nasmig-xl's) and PLUGIN (on,
# off).
# Lines starting "job: result" are what the test reads; "job: FAIL" ends
# the job with exit status 1.
set -u
. /job/job.env
N=/job/nasmig
OUTD=/job/out
NAME=nasmig-$GUEST
mkdir -p "$OUTD" /run/nasmig/content
READERS=
# The console readers hold /job open: stop them when the job ends.
trap 'kill $READERS 2>/dev/null' EXIT
log() { echo "job: $*"; }
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

dump_logs() {
	for f in /var/log/xen/*.log "$OUTD"/*.log; do
		[ -f "$f" ] || continue
		echo "----- $f (tail, without heartbeats)"
		grep -av 'nasmig: heartbeat' "$f" | tail -n 40
	done
}
fail() {
	log "FAIL $*"
	for p in $(pgrep -f qemu-system-x86_64); do
		for t in /proc/$p/task/*; do
			echo "device model $p thread $(cat $t/comm) wchan $(cat $t/wchan 2>/dev/null) $(head -c 200 $t/stack 2>/dev/null | tr '\n' ' ')"
		done
	done
	dump_logs
	xl list 2>&1
	exit 1
}

# The device model: our QEMU with its own libraries (dom0 runs the same
# Debian release, so only what dom0 lacks is carried).
cat >/run/nasmig/dm.sh <<EOF
#!/bin/sh
exec env LD_LIBRARY_PATH=$N/lib $N/qemu-system-x86_64 -L $N/share "\$@"
EOF
chmod +x /run/nasmig/dm.sh
# Stock xl's transport for localhost without ssh: the receiving command
# runs here, its stdin and stdout are the migration stream.
cat >/run/nasmig/pipe.sh <<'EOF'
#!/bin/sh
shift
exec "$@"
EOF
chmod +x /run/nasmig/pipe.sh

# The data disk: QEMU serves it in every case (qdisk for PV and PVH; for
# HVM the emulated IDE disk, which the guest keeps with
# xen_emul_unplug=never, or with HVM_DISK=pv the PV disk, qdisk).
QDISK="'format=raw,vdev=xvda,access=rw,backendtype=${BACKEND:-qdisk},direct-io-safe,target=$DATA'"
CONSOLE_KEY=console/tty
EXTRA=
case $GUEST in
pv | pvh)
	TYPE="type = \"$GUEST\""
	# PVH under TCG: shadow paging (hap 0), and a native TSC (otherwise
	# SVM's RDTSCP intercept fails: "SVM Insn len emulation failed").
	[ "$GUEST" = pvh ] && TYPE="$TYPE
hap = 0
tsc_mode = \"native\""
	DISK=$QDISK
	ARGS=device_model_args_pv
	CONSOLE=hvc0
	;;
hvm)
	# Under TCG as for PVH.  The console is the emulated serial port.
	TYPE='type = "hvm"
hap = 0
tsc_mode = "native"
vga = "none"
nographic = 1
serial = "pty"'
	case ${HVM_DISK:-emulated} in
	emulated)
		DISK="'format=raw,vdev=hda,access=rw,target=$DATA'"
		EXTRA=xen_emul_unplug=never
		;;
	pv) DISK=$QDISK ;;
	*) fail "unknown HVM_DISK $HVM_DISK" ;;
	esac
	ARGS=device_model_args_hvm
	CONSOLE=ttyS0
	CONSOLE_KEY=serial/0/tty
	;;
*) fail "unknown guest type $GUEST" ;;
esac
# PLUGIN=off (job.env): the same device model without the library.
DM_ARGS="\"-plugin\", \"$N/libnasmig.so,content-index=on,log=${PLUGIN_LOG:-info}\""
[ "${PLUGIN:-on}" = on ] || DM_ARGS=
cat >/run/nasmig/$NAME.cfg <<EOF
name = "$NAME"
$TYPE
memory = $MEM
vcpus = 1
kernel = "/job/guest/vmlinuz"
ramdisk = "/job/guest/initrd.img"
extra = "console=$CONSOLE quiet $EXTRA nasmig.workload=${WORKLOAD:-pagecache-read} nasmig.mib=$MIB"
disk = [ $DISK ]
device_model_version = "qemu-xen"
device_model_override = "/run/nasmig/dm.sh"
$ARGS = [ $DM_ARGS ]
on_crash = "preserve"
EOF

# console_attach: the domain's console pty, copied into console.log (the
# pty of a domain ends with it: attach again after a migration).
console_attach() {
	domid=$(xl domid "$NAME" 2>/dev/null) || fail "no domain $NAME"
	tty=
	for _ in $(seq 100); do
		tty=$(xenstore-read "/local/domain/$domid/$CONSOLE_KEY" 2>/dev/null) && [ -n "$tty" ] && break
		sleep 0.1
	done
	[ -n "$tty" ] || fail "no console pty for domain $domid"
	stty -F "$tty" raw -echo
	cat "$tty" >>"$OUTD/console.log" &
	READERS="$READERS $!"
	log "domain $NAME is $domid, console $tty"
}
# wait_for REGEX SECONDS [FROM-LINE]: a console line matching REGEX; the
# console's last line is shown every 30 s while waiting.
wait_for() {
	start=$(date +%s)
	shown=$start
	while :; do
		tail -n +"${3:-1}" "$OUTD/console.log" | grep -aqE "$1" && return 0
		t=$(date +%s)
		[ $((t - start)) -lt "$2" ] || return 1
		if [ $((t - shown)) -ge 30 ]; then
			shown=$t
			log "waiting $((t - start)) s for /$1/; console: $(tail -n 1 "$OUTD/console.log")"
		fi
		sleep 0.5
	done
}
lines() { wc -l <"$OUTD/console.log"; }
last_heartbeat() { grep -aoE 'nasmig: heartbeat n=[0-9]+' "$OUTD/console.log" | tail -1 | sed 's/.*n=//'; }

log "guest $GUEST, $MEM MiB, page cache $MIB MiB from $DATA"
: >"$OUTD/console.log"
t0=$(now)
xl create -p "/run/nasmig/$NAME.cfg" >"$OUTD/create.log" 2>&1 || { cat "$OUTD/create.log"; fail "xl create"; }
console_attach
xl unpause "$NAME" || fail "xl unpause"
wait_for 'nasmig: ready' 300 || fail "the guest did not reach its steady state"
grep -a 'nasmig: ready' "$OUTD/console.log"
disk=$(grep -aoE 'disk=/dev/[a-z]+' "$OUTD/console.log" | head -1)
log "result step=boot ms=$(ms "$t0" "$(now)") $disk"
verify() { # LABEL: the guest checks every file it read (through its page cache)
	from=$(lines)
	echo verify >"$tty"
	wait_for 'nasmig: (PASS checked=|FAIL done)' 300 "$from" || fail "no answer to verify ($1)"
	tail -n +"$from" "$OUTD/console.log" | grep -aE 'nasmig: (PASS|FAIL)'
	tail -n +"$from" "$OUTD/console.log" | grep -aq 'nasmig: PASS checked=' || fail "the guest's files do not verify ($1)"
	log "result step=verify-$1 ok"
}
verify before
DM_PID=$(pgrep -f -- "-xen-domid $domid " | head -1)
log "device model pid ${DM_PID:-none}: $(ls /run/nasmig/content)"
# What the library said about the disks (tracked or not, and why).
grep -a 'nasmig' "/var/log/xen/qemu-dm-$NAME.log" 2>/dev/null | grep -av heartbeat | head -n 8 | sed 's/^/job: device model log: /'

overwritten=0
if [ "${OVERWRITE:-0}" -gt 0 ]; then
	# Blocks of the first file the guest read, changed on the disk behind
	# QEMU's back: the guest's page cache keeps the old content, the
	# index still holds its hash, the disk no longer does.
	file=$(debugfs -R "cat /manifest.sha256" "$DATA" 2>/dev/null | awk '{print $2}' | grep -vE '^(big|mmap)/' | head -1)
	[ -n "$file" ] || fail "no file in the data disk's manifest"
	i=0
	while [ "$i" -lt "$OVERWRITE" ]; do
		blk=$(debugfs -R "bmap /$file $i" "$DATA" 2>/dev/null)
		[ -n "$blk" ] && [ "$blk" -gt 0 ] || fail "no block $i of /$file"
		dd if=/dev/urandom of="$DATA" bs=4096 seek="$blk" count=1 conv=notrunc oflag=direct status=none || fail "overwrite block $blk"
		i=$((i + 1))
		overwritten=$((overwritten + 1))
	done
	log "overwrote $overwritten blocks of /$file behind the index's back"
fi

migrate() { # LABEL COMMAND
	hb=$(last_heartbeat)
	from=$(lines)
	t0=$(now)
	# xl's and nasmig-xl's messages go to the console as they come.
	{
		timeout 600 xl migrate -s "$2" "$NAME" localhost
		echo $? >"$OUTD/migrate-$1.rc"
	} 2>&1 | tee "$OUTD/migrate-$1.log"
	rc=$(cat "$OUTD/migrate-$1.rc")
	took=$(ms "$t0" "$(now)")
	[ "$rc" = 0 ] || fail "xl migrate ($1) exit $rc"
	console_attach
	wait_for "nasmig: heartbeat n=$((hb + 2))([^0-9]|$)" 120 "$from" || fail "no heartbeat after the migration ($1): last before n=$hb"
	log "result step=migrate-$1 ms=$took heartbeat-before=$hb"
}

migrate nasmig "$N/nasmig-xl --capture=$OUTD/cap --log=info"
s=$(stat -c %s "$OUTD/cap/sent.stream") || fail "no capture of the sent stream"
r=$(stat -c %s "$OUTD/cap/received.stream") || fail "no capture of the received stream"
if cmp -s "$OUTD/cap/sent.stream" "$OUTD/cap/received.stream"; then same=yes; else same=no; fi
log "result step=streams sent-bytes=$s received-bytes=$r identical=$same overwritten=$overwritten"
rm -f "$OUTD/cap/sent.stream"

# STOCK=off (job.env): no second, stock migration (another guest type
# with the same device model shows it).
[ "${STOCK:-on}" = on ] && migrate stock /run/nasmig/pipe.sh

verify after
xl destroy "$NAME"
log "done"
